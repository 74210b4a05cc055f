"""Seeded variation: what one run of a scenario draws from its seed, and how to fix it.

A scenario may give ranges instead of values (``vary:``): threads, VMs and vCPUs per
VM, cycles, the order of the touches, and pauses before steps; an injection may fire
with a ``probability``; a race's delays are drawn by the workload from a seed.  Each
run draws everything from one 63-bit seed, each value from its own sub-stream
(``Random(f"{seed}/{what}")``), so that dropping one range does not change the
others and ``--seed S`` replays a run exactly.  A repeated run's seeds follow one
another (:func:`next_seed`): the seed of iteration *n* is printed and recorded, and
``--seed`` with it replays that iteration as the first.

:func:`apply` turns a scenario and a :class:`Drawn` into the concrete scenario the
steps run; :func:`reproducer` writes the drawn values into the scenario's own YAML
document (``vary`` gone, ``seed`` set, injections that did not fire removed).

>>> next_seed(1) != next_seed(2), 0 <= next_seed(1) < 2**63
(True, True)
"""

from __future__ import annotations

import random
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import yaml

from harness.scenario.spec import (
    FloatRange,
    InjectStep,
    IntRange,
    Scenario,
    Step,
    VarySpec,
    WorkloadStep,
)

__all__ = ["SEED_MASK", "new_seed", "next_seed", "seeds", "DrawnWorkload", "Drawn", "draw",
           "apply", "reproducer", "stream", "dump_scenario"]

SEED_MASK = (1 << 63) - 1
_GOLDEN = 0x9E3779B97F4A7C15


def new_seed() -> int:
    """A fresh random seed (a run that names none)."""
    return secrets.randbits(63)


def next_seed(seed: int) -> int:
    """The seed after *seed* (splitmix64, 63 bits): the next iteration's."""
    z = (seed + _GOLDEN) & ((1 << 64) - 1)
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & ((1 << 64) - 1)
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & ((1 << 64) - 1)
    return (z ^ (z >> 31)) & SEED_MASK


def seeds(first: int) -> Iterator[int]:
    """*first*, then each next seed: one per iteration.

    >>> s = seeds(7); a, b = next(s), next(s); a == 7 and b == next_seed(7)
    True
    """
    seed = first
    while True:
        yield seed
        seed = next_seed(seed)


def stream(seed: int, what: str) -> random.Random:
    """The random sub-stream of *seed* for one drawn value."""
    return random.Random(f"{seed}/{what}")


@dataclass(frozen=True)
class DrawnWorkload:
    """What one workload drew."""

    threads: bool
    vms: int
    vcpus: int
    cycles: int
    order: tuple[int, ...]          # the touches' indices in the order performed
    race_seed: int                  # the workload's own seed (race delays)


@dataclass(frozen=True)
class Drawn:
    """Everything one run drew from its seed."""

    seed: int
    workloads: dict[str, DrawnWorkload] = field(default_factory=dict)
    delays: dict[int, float] = field(default_factory=dict)   # step index -> seconds
    fires: dict[int, bool] = field(default_factory=dict)     # inject step index -> fires

    def to_json(self) -> dict[str, Any]:
        """The ``drawn`` record of ``iterations.jsonl`` and ``result.json``."""
        return {"seed": self.seed,
                "workloads": {k: vars(v) | {"order": list(v.order)}
                              for k, v in self.workloads.items()},
                "delays": {str(k): round(v, 6) for k, v in self.delays.items()},
                "fires": {str(k): v for k, v in self.fires.items()}}


def _int(r: random.Random, rng: IntRange | None, default: int) -> int:
    return default if rng is None else r.randint(rng.lo, rng.hi)


def _seconds(r: random.Random, rng: FloatRange | None) -> float:
    return 0.0 if rng is None else r.uniform(rng.lo, rng.hi)


def _draw_workload(seed: int, st: WorkloadStep, v: VarySpec | None) -> DrawnWorkload:
    key = f"workload/{st.id}"
    varied = v is not None and (not v.workloads or st.id in v.workloads)
    vv = v if varied else None
    order = list(range(len(st.touch)))
    if vv is not None and vv.touch_order == "shuffle":
        stream(seed, f"{key}/order").shuffle(order)
    threads = st.threads if vv is None or vv.threads is None else \
        stream(seed, f"{key}/threads").choice(vv.threads)
    return DrawnWorkload(
        threads=threads,
        vms=_int(stream(seed, f"{key}/vms"), vv.vms if vv else None, st.vms),
        vcpus=_int(stream(seed, f"{key}/vcpus"), vv.vcpus if vv else None, st.vcpus),
        cycles=_int(stream(seed, f"{key}/cycles"), vv.cycles if vv else None, st.cycles),
        order=tuple(order), race_seed=stream(seed, f"{key}/race").getrandbits(63))


def draw(sc: Scenario, seed: int) -> Drawn:
    """Every value of one run of *sc* drawn from *seed*."""
    v = sc.vary
    delays = {st.index: _seconds(stream(seed, f"delay/{st.index}"), v.delay)
              for st in sc.steps[1:]} if v is not None and v.delay is not None else {}
    fires = {st.index: stream(seed, f"inject/{st.index}").random() < st.probability
             for st in sc.steps if isinstance(st, InjectStep) and st.probability < 1.0}
    return Drawn(seed=seed, workloads={st.id: _draw_workload(seed, st, v)
                                       for st in sc.workloads},
                 delays=delays, fires=fires)


def _apply_step(st: Step, drawn: Drawn) -> Step:
    if st.index in drawn.delays:
        st = replace(st, delay=drawn.delays[st.index])
    if isinstance(st, WorkloadStep):
        w = drawn.workloads[st.id]
        return replace(st, threads=w.threads, vms=w.vms, vcpus=w.vcpus, cycles=w.cycles,
                       touch=tuple(st.touch[i] for i in w.order), seed=w.race_seed)
    if isinstance(st, InjectStep) and st.index in drawn.fires:
        return replace(st, probability=1.0 if drawn.fires[st.index] else 0.0)
    return st


def apply(sc: Scenario, drawn: Drawn) -> Scenario:
    """The concrete scenario of one run: drawn values in its steps, ``vary`` gone."""
    return replace(sc, steps=tuple(_apply_step(st, drawn) for st in sc.steps), vary=None,
                   seed=drawn.seed)


# ---- the reproducer --------------------------------------------------------------------

def _fix_workload(raw: dict[str, Any], w: DrawnWorkload) -> None:
    raw["threads"], raw["vms"], raw["vcpus"], raw["cycles"] = w.threads, w.vms, w.vcpus, w.cycles
    if "touch" in raw:
        raw["touch"] = [raw["touch"][i] for i in w.order]


def reproducer(doc: dict[str, Any], drawn: Drawn, note: str = "") -> dict[str, Any]:
    """*doc* (the scenario's YAML document) with *drawn*'s values written in.

    ``vary`` is removed, ``seed`` set (the workloads' race delays and nothing else
    are still drawn from it), each step's pause written as its ``delay``, and an
    injection that did not fire dropped (one that fired loses its probability).
    """
    out = {k: v for k, v in doc.items() if k != "vary"}
    out["seed"] = drawn.seed
    if note:
        out["description"] = note
    steps = []
    for i, raw in enumerate(doc["steps"]):
        step = dict(raw)
        if i in drawn.delays and drawn.delays[i] > 0:
            step["delay"] = round(drawn.delays[i], 6)
        if "workload" in step:
            wl = dict(step["workload"])
            wid = wl.get("id", f"w{sum('workload' in s for s in doc['steps'][:i]) + 1}")
            _fix_workload(wl, drawn.workloads[wid])
            step["workload"] = wl
        if "inject" in step and i in drawn.fires:
            if not drawn.fires[i]:
                continue
            step["inject"] = {k: v for k, v in step["inject"].items() if k != "probability"}
        steps.append(step)
    out["steps"] = steps
    return out


HEX_KEYS = ("gpa", "size", "to")           # addresses and sizes read best in hex


def _hexed(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: f"{v:#x}" if k in HEX_KEYS and isinstance(v, int) and not isinstance(v, bool)
                else _hexed(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_hexed(x) for x in node]
    return node


def dump_scenario(doc: dict[str, Any]) -> str:
    """A scenario document as YAML, addresses and sizes in hex, keys in their order.

    >>> slot = {"gpa": 0x80000, "size": 65536}
    >>> print(dump_scenario({"steps": [{"workload": {"slots": [slot]}}]}))
    steps:
    - workload:
        slots:
        - gpa: '0x80000'
          size: '0x10000'
    <BLANKLINE>
    """
    return yaml.safe_dump(_hexed(doc), sort_keys=False)
