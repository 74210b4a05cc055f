"""Figures for race hunting: iterations per minute inside one boot against cold runs.

Run:  python benchmarks/bench_repeat.py [SCENARIO] [--cold N] [--iterations M]

Runs the scenario N times cold (a boot each, as ``slatcheck run``), then once with
``--repeat M`` (one boot, M iterations), and prints runs per minute, iterations per
minute (the iterations alone, and with the one boot included) and the ratio.  Figures,
not assertions: compare them between commits and machines.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from harness.repeat import RepeatPlan, run_repeated  # noqa: E402
from harness.runner import run_scenario  # noqa: E402
from harness.scenario import load_scenario  # noqa: E402
from harness.vary import apply, draw  # noqa: E402


def quiet(line: str) -> None:
    pass


def cold(path: Path, runs: int, root: Path) -> list[float]:
    """Wall seconds of each cold run (boot included)."""
    sc = load_scenario(path)
    out = []
    for i in range(runs):
        t = time.monotonic()
        res = run_scenario(apply(sc, draw(sc, i + 1)), root, progress=quiet)
        out.append(time.monotonic() - t)
        print(f"cold run {i + 1}: {res.verdict:5} {out[-1]:6.2f} s", flush=True)
    return out


def warm(path: Path, iterations: int, root: Path) -> tuple[float, float]:
    """(seconds per iteration, wall seconds of the whole repeated run)."""
    t = time.monotonic()
    res = run_repeated(load_scenario(path), root, RepeatPlan(count=iterations, seed=1),
                       progress=quiet)
    wall = time.monotonic() - t
    assert res.repeat is not None
    per = res.repeat["rate"]["seconds_per_iteration"]
    print(f"repeat {iterations}: {res.verdict:5} {wall:6.2f} s in all, {per:.2f} s per "
          f"iteration ({res.repeat['text']})", flush=True)
    return per, wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("scenario", nargs="?", type=Path,
                    default=ROOT / "scenarios" / "linux" / "kvm-npt-smoke.yaml")
    ap.add_argument("--cold", type=int, default=2, help="cold runs (2)")
    ap.add_argument("--iterations", type=int, default=6, help="iterations in one boot (6)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        runs = cold(args.scenario, args.cold, Path(tmp) / "cold")
        per, wall = warm(args.scenario, args.iterations, Path(tmp) / "warm")
    cold_pm = 60 / statistics.median(runs)
    warm_pm = 60 / per
    whole_pm = 60 * args.iterations / wall
    median = statistics.median(runs)
    print(f"cold runs per minute:               {cold_pm:7.2f}  (median {median:.2f} s)")
    print(f"iterations per minute in one boot:  {warm_pm:7.2f}  ({warm_pm / cold_pm:.1f}x cold)")
    print(f"  with the boot counted:            {whole_pm:7.2f}  ({whole_pm / cold_pm:.1f}x cold)")


if __name__ == "__main__":
    main()
