"""Benchmark: walk one million 4 KiB NPT mappings and diff them against a trivial model.

Run from the repository root: ``python benchmarks/bench_walk_diff.py [--pages N] [--runs N]``.
Prints seconds for build, walk and diff (the median of ``--runs`` runs, with the
range: the machine is noisy), mappings per second, and the ratio of the median
walk + diff to the 2 s target.  The tables are built by the independent test
encoder (``tests/unit/encoders.py``) into a :class:`harness.mem.DictMem`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "unit"))

from encoders import NptEncoder, Spec, build  # noqa: E402

from harness.diff import diff  # noqa: E402
from harness.findings import Finding  # noqa: E402
from harness.formats import Mapping, WalkLimits  # noqa: E402
from harness.formats.npt import NptParams, walk  # noqa: E402
from harness.mem import DictMem  # noqa: E402
from harness.models.base import Expectation, ExpectedPage  # noqa: E402

__all__ = ["main"]

TARGET_SECONDS = 2.0
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
        "walk", args.runs, lambda r: len(r.mappings) == pages and not r.findings,
        walk, mem, ROOT, params)
    required = [ExpectedPage(i << 12, frame_of(i, pages), True, True, True)
                for i in range(pages)]
    exp = Expectation("vm0", required, no_rule)
    findings, t_diff, diffs_ok = timed_runs("diff", args.runs, lambda f: not f, diff, res, exp)
    _, t_new = timed("  (Mapping() x N alone)", _construct, pages)
    total = t_walk + t_diff
    print(f"{'mappings':<28} {len(res.mappings):8d}")
    print(f"{'tables read':<28} {res.tables_read:8d}")
    print(f"{'walk mappings/s':<28} {len(res.mappings) / t_walk:12.0f}")
    print(f"{'walk + diff':<28} {total:8.3f} s  = {total / TARGET_SECONDS:.2f} x the "
          f"{TARGET_SECONDS:.0f} s target")
    ok = walks_ok and diffs_ok and len(res.mappings) == pages and not findings \
        and not res.findings
    print("result", "OK" if ok else f"WRONG: {len(findings)} findings")
    return 0 if ok else 1


def _construct(n: int) -> int:
    """Build n Mapping objects the way the walker does, to isolate their cost."""
    out = [Mapping(i, i, 4096, True, True, True, 1, i, None, True, True, 0, 0)
           for i in range(n)]
    return len(out)


if __name__ == "__main__":
    sys.exit(main())
