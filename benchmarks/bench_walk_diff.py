"""Benchmark: walk one million 4 KiB NPT mappings and diff them against a trivial model.

Run from the repository root: ``python benchmarks/bench_walk_diff.py [--pages N] [--runs N]``.
Prints seconds for build, walk and diff (the median of ``--runs`` runs, with the
range: the machine is noisy), leaves per second, and the ratio of the median
walk + diff to the 0.25 s target.  The tables are built by the independent test
encoder (``tests/unit/encoders.py``) into a :class:`harness.mem.DictMem`.

Two diffs are timed: the bulk one (the model hands its pages as
:class:`~harness.models.base.ExpectedPages` columns and its per-leaf rule over
:class:`~harness.formats.leaves.Leaves`), and the per-object one (a list of
``ExpectedPage`` and a rule called once per ``Mapping``, as the shipped models
still do), which also pays for building a million ``Mapping`` records.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "unit"))

import numpy as np  # noqa: E402
from encoders import NptEncoder, Spec, build  # noqa: E402

from harness.diff import diff  # noqa: E402
from harness.findings import Finding  # noqa: E402
from harness.formats import Mapping, WalkLimits  # noqa: E402
from harness.formats.leaves import Leaves  # noqa: E402
from harness.formats.npt import NptParams, walk  # noqa: E402
from harness.mem import DictMem  # noqa: E402
from harness.models.base import Expectation, ExpectedPage, ExpectedPages  # noqa: E402

__all__ = ["main"]

TARGET_SECONDS = 0.25
ROOT = 0x1000
FRAME_BASE = 1 << 32          # data frames live above the tables


def frame_of(i: int, pages: int) -> int:
    """A scrambled but one-to-one host frame for guest page *i*."""
    return FRAME_BASE + ((i * 7919) % pages) * 4096


def build_tables(pages: int) -> DictMem:
    """*pages* consecutive 4 KiB KVM-flavoured NPT leaves from GPA 0."""
    mem = DictMem(size=1 << 40)
    specs = [Spec(i << 12, frame_of(i, pages), 4096, True, True, True, None, True, True)
             for i in range(pages)]
    build(mem, NptEncoder(kvm=True), ROOT, 4, specs)
    return mem


def no_rule(m: Mapping) -> list[Finding]:
    """The trivial per-leaf rule: every leaf is acceptable."""
    return []


def no_rule_bulk(leaves: Leaves) -> list[Finding]:
    """The same rule over all leaves at once."""
    return []


def required_columns(pages: int) -> ExpectedPages:
    """Every page required, with its frame and R/W/X, as columns."""
    i = np.arange(pages, dtype=np.uint64)
    frames = np.uint64(FRAME_BASE) + ((i * np.uint64(7919)) % np.uint64(pages)) * np.uint64(4096)
    ones = np.ones(pages, np.int8)
    return ExpectedPages(i << np.uint64(12), frames, np.ones(pages, np.bool_), ones, ones, ones,
                         np.full(pages, -1, np.int16))


def walk_and_diff(mem: DictMem, params: NptParams, exp: Expectation) -> list[Finding]:
    """One walk and one diff, as a check step does them."""
    return diff(walk(mem, ROOT, params), exp)


def timed(label: str, fn, *args):  # type: ignore[no-untyped-def]
    """Run fn(*args), print and return (result, seconds)."""
    t0 = time.perf_counter()
    out = fn(*args)
    dt = time.perf_counter() - t0
    print(f"{label:<28} {dt:8.3f} s")
    return out, dt


def timed_runs(label: str, runs: int, ok, fn, *args):  # type: ignore[no-untyped-def]
    """Run fn(*args) *runs* times, each result checked by ok(result) and dropped before
    the next run (so every run sees the same heap); print and return
    (last result, median seconds, whether every result was ok)."""
    times, good, out = [], True, None
    for _ in range(runs):
        out = None
        t0 = time.perf_counter()
        out = fn(*args)
        times.append(time.perf_counter() - t0)
        good = good and ok(out)
    dt = statistics.median(times)
    print(f"{label:<28} {dt:8.3f} s  (median of {runs}: {min(times):.3f} .. {max(times):.3f})")
    return out, dt, good


def main() -> int:
    """Build, walk, diff; print the figures; non-zero exit if the result is wrong."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pages", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=3, help="walks and diffs to time (median)")
    args = ap.parse_args()
    pages = args.pages
    mem, _ = timed("build (encoder)", build_tables, pages)
    params = NptParams(flavour="kvm", limits=WalkLimits(mem_size=1 << 40))
    res, t_walk, walks_ok = timed_runs(
        "walk", args.runs, lambda r: r.leaf_count == pages and not r.findings,
        walk, mem, ROOT, params)
    bulk = Expectation("vm0", required_columns(pages), no_rule, no_rule_bulk)
    findings, t_diff, diffs_ok = timed_runs("diff (bulk)", args.runs, lambda f: not f,
                                            diff, res, bulk)
    _, t_both, both_ok = timed_runs("walk + diff (bulk), one go", args.runs, lambda f: not f,
                                    walk_and_diff, mem, params, bulk)
    required = [ExpectedPage(i << 12, frame_of(i, pages), True, True, True)
                for i in range(pages)]
    legacy = Expectation("vm0", required, no_rule)
    _, t_legacy, legacy_ok = timed_runs("walk + diff (per object)", 1, lambda f: not f,
                                        walk_and_diff, mem, params, legacy)
    _, t_new = timed("  (Mapping() x N alone)", _construct, pages)
    total = t_walk + t_diff
    print(f"{'leaves':<28} {res.leaf_count:8d}")
    print(f"{'tables read':<28} {res.tables_read:8d}")
    print(f"{'walk leaves/s':<28} {res.leaf_count / t_walk:12.0f}")
    print(f"{'walk + diff (bulk)':<28} {total:8.3f} s  = {total / TARGET_SECONDS:.2f} x the "
          f"{TARGET_SECONDS:g} s target; one go {t_both:.3f} s")
    print(f"{'per object / bulk':<28} {t_legacy / t_both:8.1f} x")
    ok = walks_ok and diffs_ok and both_ok and legacy_ok and res.leaf_count == pages \
        and not findings and not res.findings
    print("result", "OK" if ok else f"WRONG: {len(findings)} findings")
    return 0 if ok else 1


def _construct(n: int) -> int:
    """Build n Mapping objects the way the walker does, to isolate their cost."""
    out = [Mapping(i, i, 4096, True, True, True, 1, i, None, True, True, 0, 0)
           for i in range(n)]
    return len(out)


if __name__ == "__main__":
    sys.exit(main())
