"""Shrink a reproducer: the smallest scenario that still fails the same way.

``slatcheck shrink FILE`` takes a failing scenario (a ``reproducer.yaml``: its seed
and drawn values fixed), runs it to learn how it fails (the verdict and the finding
kinds: its *signature*), then tries one-step reductions in order -- no threads; fewer
VMs, vCPUs, cycles; a slot less (with its touches); fewer touches (halves, then one
by one); shorter delays before steps; a shorter race delay and aftermath -- and keeps
each candidate that still fails with the same signature within ``--tries`` runs
(races are not deterministic), until no reduction is kept or ``--budget`` candidates
were run.  Every candidate runs as an iteration inside one boot (:class:`~harness.
repeat.Engine`); one that does not validate is skipped without running.  The smallest
is written beside FILE (``NAME.min.yaml``, or ``--out``) and ``shrink.json`` in the run
directory lists what was tried and kept.

>>> [what for what, _ in reductions({"steps": [{"boot": {}}, {"workload": {"vms": 4,
...     "slots": [{"gpa": 0, "size": 4096}], "touch": []}}]})][:3]
['steps.1.workload.vms 4 -> 1', 'steps.1.workload.vms 4 -> 2', 'steps.1.workload.vms 4 -> 3']
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.artifacts import make_run_dir, write_json
from harness.context import Progress, Services, default_services
from harness.errors import ScenarioError
from harness.repeat import Engine, Iteration, RepeatPlan
from harness.scenario import load_scenario
from harness.scenario.spec import Scenario
from harness.scenario.yamlsource import read_yaml
from harness.vary import dump_scenario, new_seed

__all__ = ["reductions", "Signature", "signature", "ShrinkResult", "shrink"]

Doc = dict[str, Any]
Signature = tuple[str, frozenset[str]]


def signature(it: Iteration) -> Signature:
    """How an iteration failed: its verdict and its finding kinds."""
    return it.result.verdict, frozenset(f.kind for f in it.result.findings)


def _smaller(n: int) -> list[int]:
    """Values to try below *n*, smallest first: 1, n // 2, n - 1."""
    return sorted({v for v in (1, n // 2, n - 1) if 1 <= v < n})


def _edited(doc: Doc, i: int, edit: Any) -> Doc:
    out = copy.deepcopy(doc)
    edit(out["steps"][i])
    return out


def _fewer_vms(doc: Doc, i: int, v: int) -> Doc:
    """*doc* with workload *i* creating *v* VMs; checks no longer count VMs (a check still
    finds every held VM, and nothing else)."""
    out = _edited(doc, i, lambda s: s["workload"].__setitem__("vms", v))
    for step in out["steps"]:
        if isinstance(step.get("check"), dict):
            step["check"].pop("vms", None)
    return out


def _counts(doc: Doc, i: int, wl: Doc) -> Iterator[tuple[str, Doc]]:
    at = f"steps.{i}.workload"
    if wl.get("threads"):
        yield f"{at}.threads true -> false", _edited(
            doc, i, lambda s: s["workload"].__setitem__("threads", False))
    for key in ("vms", "vcpus", "cycles"):
        for v in _smaller(int(wl.get(key, 1))):
            yield f"{at}.{key} {wl.get(key)} -> {v}", _fewer_vms(doc, i, v) if key == "vms" \
                else _edited(doc, i, lambda s, k=key, v=v: s["workload"].__setitem__(k, v))


def _drop_slot(step: Doc, j: int) -> None:
    wl = step["workload"]
    gone = wl["slots"].pop(j)
    lo = int(str(gone["gpa"]), 0)
    from harness.sizes import parse_size
    hi = lo + parse_size(gone["size"])
    wl["touch"] = [t for t in wl.get("touch", []) if not lo <= int(str(t["gpa"]), 0) < hi]
    race = wl.get("race")
    if race is not None and "slot" in race and race["slot"] > j:
        race["slot"] -= 1


def _slots(doc: Doc, i: int, wl: Doc) -> Iterator[tuple[str, Doc]]:
    race = wl.get("race") or {}
    raced = race.get("slot", len(wl["slots"]) - 1) if race else None
    for j in range(len(wl["slots"])):
        if j != raced and len(wl["slots"]) > 1:
            yield f"steps.{i}.workload.slots[{j}] removed", _edited(
                doc, i, lambda s, j=j: _drop_slot(s, j))


def _touches(doc: Doc, i: int, wl: Doc) -> Iterator[tuple[str, Doc]]:
    n = len(wl.get("touch", []))
    size = n // 2
    while size >= 1:
        for lo in range(0, n, size):
            yield f"steps.{i}.workload.touch[{lo}:{lo + size}] removed", _edited(
                doc, i, lambda s, lo=lo, size=size: s["workload"].__setitem__(
                    "touch", s["workload"]["touch"][:lo] + s["workload"]["touch"][lo + size:]))
        size //= 2


def _race(doc: Doc, i: int, wl: Doc) -> Iterator[tuple[str, Doc]]:
    race = wl.get("race")
    if not race:
        return
    delay = race.get("delay_us", {"min": 0, "max": 1000})
    lo, hi = (delay["min"], delay["max"]) if isinstance(delay, dict) else (delay, delay)
    if hi > 0:
        new = {"min": min(lo, hi // 2), "max": hi // 2}
        yield f"steps.{i}.workload.race.delay_us max {hi} -> {hi // 2}", _edited(
            doc, i, lambda s: s["workload"]["race"].__setitem__("delay_us", new))
    after = int(race.get("after_us", 2000))
    if after > 0:
        yield f"steps.{i}.workload.race.after_us {after} -> {after // 2}", _edited(
            doc, i, lambda s: s["workload"]["race"].__setitem__("after_us", after // 2))


def _delays(doc: Doc) -> Iterator[tuple[str, Doc]]:
    for i, step in enumerate(doc["steps"]):
        d = float(step.get("delay", 0) or 0)
        for v in (0.0, round(d / 2, 6)) if d > 0 else ():
            yield f"steps.{i}.delay {d:g} -> {v:g}", _edited(
                doc, i, lambda s, v=v: s.__setitem__("delay", v) if v else s.pop("delay"))


def reductions(doc: Doc) -> Iterator[tuple[str, Doc]]:
    """Every one-step smaller variant of *doc*, the biggest cuts first."""
    for i, step in enumerate(doc["steps"]):
        if "workload" in step:
            wl = step["workload"]
            yield from _counts(doc, i, wl)
            yield from _slots(doc, i, wl)
            yield from _touches(doc, i, wl)
            yield from _race(doc, i, wl)
    yield from _delays(doc)


@dataclass
class ShrinkResult:
    """What shrinking found."""

    reproduced: bool
    signature: Signature | None
    smallest: Doc
    kept: list[str] = field(default_factory=list)
    tried: list[dict[str, Any]] = field(default_factory=list)
    out: Path | None = None
    run_dir: Path | None = None


def _load(doc: Doc, where: Path) -> Scenario | None:
    """The candidate as a validated scenario, or None if it does not validate."""
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", dir=where, delete=False) as f:
        f.write(dump_scenario(doc))
    try:
        return load_scenario(Path(f.name))
    except ScenarioError:
        return None
    finally:
        Path(f.name).unlink()


@dataclass
class _Runner:
    engine: Engine
    seed: int
    tries: int
    index: int = 0

    def fails(self, sc: Scenario, want: Signature | None) -> Signature | None:
        """The signature of the first of *tries* runs that fails (as *want*, if given)."""
        for _ in range(self.tries):
            self.index += 1
            it = self.engine.iterate(self.index, self.seed, sc)
            if it.failed and (want is None or signature(it) == want):
                return signature(it)
            if it.result.stop:
                raise KeyboardInterrupt("interrupted while shrinking")
        return None


def _said(sig: Signature | None) -> str:
    """A failure's signature as a person reads it: ``fail with wrong_frame``.

    >>> _said(("fail", frozenset({"wrong_frame", "missing"})))
    'fail with missing, wrong_frame'
    """
    if sig is None:
        return "nothing"
    verdict, kinds = sig
    return verdict + (f" with {', '.join(sorted(kinds))}" if kinds else "")


def _write(doc: Doc, out: Path, note: str) -> None:
    out.write_text(f"# {note}\n" + dump_scenario(doc))


def shrink(path: Path, artifacts_root: Path, *, tries: int = 3, budget: int = 60,
           out: Path | None = None, progress: Progress = print,
           services: Services | None = None) -> ShrinkResult:
    """Shrink the failing scenario *path* (see the module)."""
    sc = load_scenario(path)
    doc, _ = read_yaml(path)
    run_dir = make_run_dir(artifacts_root, f"{sc.name}-shrink"[:64])
    engine = Engine(sc, run_dir, services or default_services(),
                    lambda line: progress(f"[shrink {sc.name}] {line}"), RepeatPlan())
    runner = _Runner(engine, sc.seed if sc.seed is not None else new_seed(), tries)
    res = ShrinkResult(False, None, doc, run_dir=run_dir)
    try:
        res.signature = runner.fails(sc, None)
        res.reproduced = res.signature is not None
        if res.reproduced:
            _greedy(runner, res, run_dir, budget, progress)
    finally:
        engine.close()
    if res.reproduced:
        res.out = out or path.with_name(path.name.removesuffix(".yaml") + ".min.yaml")
        _write(res.smallest, res.out, f"shrunk from {path.name} ({len(res.kept)} reduction(s) "
               f"kept of {len(res.tried)} tried); fails as {_said(res.signature)}")
    write_json(run_dir / "shrink.json", {
        "file": str(path), "reproduced": res.reproduced, "out": str(res.out) if res.out else None,
        "signature": [res.signature[0], sorted(res.signature[1])] if res.signature else None,
        "kept": res.kept, "tried": res.tried})
    return res


def _greedy(runner: _Runner, res: ShrinkResult, where: Path, budget: int,
            progress: Progress) -> None:
    """Keep the first reduction that still fails the same way; again, until none does."""
    changed = True
    while changed and len(res.tried) < budget:
        changed = False
        for what, cand in reductions(res.smallest):
            if len(res.tried) >= budget:
                return
            sc = _load(cand, where)
            if sc is None:
                res.tried.append({"what": what, "result": "invalid"})
                continue
            kept = runner.fails(sc, res.signature) is not None
            res.tried.append({"what": what, "result": "kept" if kept else "passes"})
            progress(f"shrink: {what}: {'kept' if kept else 'no longer fails the same way'}")
            if kept:
                res.smallest, changed = cand, True
                res.kept.append(what)
                break
