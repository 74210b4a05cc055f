"""Figures for the boot tier's scenarios under pytest-xdist: ``-n 2`` against ``-n 1``.

Run:  python benchmarks/bench_pytest.py [SCENARIO ...] [--cold]

Runs the scenario files (default: four x86 scenarios of the boot tier) as pytest
items once with ``-n 1`` and once with ``-n 2``, warm (a warm-up run first saves
the machine state) or with ``--cold``; prints wall times, scenarios per second
and the ratio of the two throughputs (the README's target: ``-n 2`` >= 1.8x ``-n 1``
on cold boots, which are CPU bound; warm runs are short and the ratio says how
much two workers still overlap).  Figures, not assertions.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ["kvm-npt-smoke", "kvm-npt-slot-flags", "kvm-npt-inject-frame",
           "kvm-npt-inject-permission"]


def run(files: list[Path], workers: int, cold: bool, artifacts: Path) -> tuple[float, str]:
    """One pytest run: wall seconds and its closing line."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n",
           str(workers), *map(str, files), f"--slat-artifacts={artifacts}",
           *(["--slat-cold"] if cold else [])]
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t
    lines = [ln for ln in proc.stdout.splitlines() if re.search(r"\d+ (passed|failed)", ln)]
    return wall, (lines[-1] if lines else proc.stdout[-300:])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("scenarios", nargs="*", default=DEFAULT)
    ap.add_argument("--cold", action="store_true", help="boot every scenario (no warm start)")
    args = ap.parse_args()
    files = [ROOT / "scenarios" / "linux" / f"{name}.yaml" for name in args.scenarios]
    print(f"machine: {platform.node()}, {os.cpu_count()} cores, load "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}; {len(files)} scenarios, "
          f"{'cold' if args.cold else 'warm'}")
    with tempfile.TemporaryDirectory() as tmp:
        if not args.cold:
            wall, line = run(files[:1], 1, False, Path(tmp) / "warmup")
            print(f"warm-up (saves the state if missing): {wall:.1f} s  {line}")
        one, line1 = run(files, 1, args.cold, Path(tmp) / "n1")
        print(f"-n 1: {one:7.1f} s  {len(files) / one:.3f} scenarios/s  {line1}")
        two, line2 = run(files, 2, args.cold, Path(tmp) / "n2")
        print(f"-n 2: {two:7.1f} s  {len(files) / two:.3f} scenarios/s  {line2}")
    ratio = one / two
    print(f"throughput -n 2 / -n 1: {ratio:.2f}x (target >= 1.8x: "
          f"{'met' if ratio >= 1.8 else 'not met'})")
    ok = all("failed" not in ln and "passed" in ln for ln in (line1, line2))
    print("result", "OK" if ok else "WRONG: a scenario failed")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
