"""The race-hunting parts of a scenario: ``vary``, ``seed``, a workload's ``race`` and
``vcpus``, an injection's ``probability``, a check ``during`` a release.

:mod:`harness.scenario.load` turns them into typed records here, after the schema;
:func:`check_extras` makes the checks the schema cannot (ranges in order, a race
slot that does not hold the guest code, a moved slot that overlaps nothing).

>>> irange(3), irange({"min": 1, "max": 4})
(IntRange(lo=3, hi=3), IntRange(lo=1, hi=4))
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from harness.scenario.spec import (
    CheckStep,
    FloatRange,
    IntRange,
    MidPoint,
    RaceSpec,
    Scenario,
    SlotSpec,
    VarySpec,
    WorkloadStep,
)
from harness.sizes import parse_addr

__all__ = ["irange", "frange", "parse_vary", "parse_race", "parse_midpoint", "check_extras",
           "VARY_BOUNDS", "MOVE_ALIGN", "default_move_target"]

Add = Callable[..., None]
PAGE = 4096
MOVE_ALIGN = 2 << 20                # a moved slot lands on the next 2 MiB boundary
VARY_BOUNDS = {"vms": (1, 64), "vcpus": (1, 16), "cycles": (1, 1_000_000)}
DEFAULT_DELAY_US = IntRange(0, 1000)


def irange(raw: Any) -> IntRange:
    """An integer or ``{min, max}`` as an :class:`IntRange`."""
    if isinstance(raw, dict):
        return IntRange(int(raw["min"]), int(raw["max"]))
    return IntRange(int(raw), int(raw))


def frange(raw: Any) -> FloatRange:
    """Seconds or ``{min, max}`` as a :class:`FloatRange`."""
    if isinstance(raw, dict):
        return FloatRange(float(raw["min"]), float(raw["max"]))
    return FloatRange(float(raw), float(raw))


def parse_vary(doc: dict[str, Any]) -> VarySpec | None:
    """The scenario's ``vary`` block, or None."""
    raw = doc.get("vary")
    if raw is None:
        return None
    threads = raw.get("threads")
    return VarySpec(
        threads=None if threads is None else
        tuple(threads) if isinstance(threads, list) else (bool(threads),),
        vms=irange(raw["vms"]) if "vms" in raw else None,
        vcpus=irange(raw["vcpus"]) if "vcpus" in raw else None,
        cycles=irange(raw["cycles"]) if "cycles" in raw else None,
        touch_order=raw.get("touch_order", "fixed"),
        delay=frange(raw["delay"]) if "delay" in raw else None,
        workloads=tuple(raw.get("workloads", ())))


def default_move_target(slots: tuple[SlotSpec, ...]) -> int:
    """Where ``move_slot`` puts a slot by default: the first 2 MiB boundary above all.

    >>> hex(default_move_target((SlotSpec(0, 0x10000), SlotSpec(0x80000, 0x10000))))
    '0x200000'
    """
    top = max((s.end for s in slots), default=0)
    return (top + MOVE_ALIGN - 1) // MOVE_ALIGN * MOVE_ALIGN


def parse_race(raw: dict[str, Any] | None, slots: tuple[SlotSpec, ...]) -> RaceSpec | None:
    """A workload's ``race`` block; the raced slot defaults to the last one."""
    if raw is None:
        return None
    mode = str(raw["mode"])
    to = parse_addr(raw["to"]) if "to" in raw else \
        default_move_target(slots) if mode == "move_slot" else None
    return RaceSpec(mode=mode, slot=int(raw.get("slot", max(len(slots) - 1, 0))),
                    delay_us=irange(raw["delay_us"]) if "delay_us" in raw else DEFAULT_DELAY_US,
                    after_us=int(raw.get("after_us", 2000)), to=to)


def parse_midpoint(raw: dict[str, Any] | None) -> MidPoint | None:
    """A check's ``at`` block (None: right after the release was sent)."""
    if raw is None:
        return None
    return MidPoint(symbol=raw.get("breakpoint"), hits=int(raw.get("hits", 1)),
                    delay=float(raw["delay"]) if "delay" in raw else None)


# ---- checks ---------------------------------------------------------------------------

def _check_range(add: Add, r: IntRange | FloatRange | None, bounds: tuple[float, float] | None,
                 *at: object) -> None:
    if r is None:
        return
    if r.lo > r.hi:
        add(f"min {r.lo:g} is above max {r.hi:g}", *at)
    if bounds is not None and (r.lo < bounds[0] or r.hi > bounds[1]):
        add(f"range {r.lo:g}..{r.hi:g} leaves {bounds[0]:g}..{bounds[1]:g}", *at)


def _check_vary(sc: Scenario, add: Add) -> None:
    v = sc.vary
    if v is None:
        return
    for key in ("vms", "vcpus", "cycles"):
        _check_range(add, getattr(v, key), VARY_BOUNDS[key], "vary", key)
    _check_range(add, v.delay, None, "vary", "delay")
    ids = [w.id for w in sc.workloads]
    for i, wid in enumerate(v.workloads):
        if wid not in ids:
            add(f"no workload {wid!r} (workloads: {', '.join(ids) or 'none'})",
                "vary", "workloads", i)
    varied = set(v.workloads or ids)
    if v.vms is not None and v.vms.lo != v.vms.hi and varied:
        for st in sc.steps:
            if isinstance(st, CheckStep) and st.vms is not None:
                add("check.vms cannot be given when vary.vms draws the number of VMs: "
                    "leave it out (every held VM is checked)", "steps", st.index, "check", "vms")


def _code_slot(st: WorkloadStep) -> int | None:
    """The slot the workload puts its guest code in: the first writable one."""
    return next((i for i, s in enumerate(st.slots) if "ro" not in s.flags), None)


def _check_race(st: WorkloadStep, add: Add) -> None:
    r = st.race
    if r is None:
        return
    at = ("steps", st.index, "workload", "race")
    _check_range(add, r.delay_us, None, *at, "delay_us")
    if r.slot >= len(st.slots):
        add(f"race.slot {r.slot}: the workload has {len(st.slots)} slot(s)", *at, "slot")
        return
    if r.mode != "close_vm" and r.slot == _code_slot(st):
        add(f"race.slot {r.slot} holds the guest code (the first writable slot): race "
            "another slot, and give the workload one slot more if needed", *at, "slot")
    raced = st.slots[r.slot]
    for j, t in enumerate(st.touch):
        if t.access == "x" and raced.gpa <= t.gpa < raced.end and r.mode != "close_vm":
            add(f"touch {t.gpa:#x} executes in the raced slot: the vCPU could fetch from "
                "memory that is gone", "steps", st.index, "workload", "touch", j, "access")
    if r.mode == "move_slot" and r.to is not None:
        _check_move(st, raced, r.to, add, *at, "to")


def _check_move(st: WorkloadStep, raced: SlotSpec, to: int, add: Add, *at: object) -> None:
    if to % PAGE:
        add(f"race.to {to:#x} is not a multiple of 4 KiB", *at)
    end = to + raced.size
    for other in st.slots:
        if other is not raced and to < other.end and other.gpa < end:
            add(f"the moved slot [{to:#x}, {end:#x}) overlaps [{other.gpa:#x}, "
                f"{other.end:#x})", *at)


def _check_midpoint(st: CheckStep, add: Add) -> None:
    m = st.at
    if m is None:
        return
    at = ("steps", st.index, "check", "at")
    if m.symbol is not None and m.delay is not None:
        add("give either breakpoint or delay, not both", *at)
    if m.symbol is None and m.hits != 1:
        add("hits counts calls of a breakpoint: give breakpoint too", *at, "hits")


def check_extras(sc: Scenario, add: Add) -> None:
    """Every check of the race-hunting fields; errors go to *add*."""
    _check_vary(sc, add)
    for st in sc.workloads:
        _check_race(st, add)
    for step in sc.steps:
        if isinstance(step, CheckStep):
            _check_midpoint(step, add)
