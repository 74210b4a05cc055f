"""Figures for a whole scenario: cold boots against warm starts, by phase and end to end.

Run:  python benchmarks/bench_scenario.py [SCENARIO] [--runs N]

Runs the scenario *N* times with ``--cold`` (boot every time) and *N* times warm
(from the saved state; a first warm run that finds none boots and saves it, and
is not counted), each as ``slatcheck run`` in a fresh process, so that "end to
end" includes the interpreter, imports and QEMU's shutdown.  Prints each run's
phases from its result.json, the medians, the warm/cold ratio and the targets
(warm <= 1.0 s, cold <= 5 s).  Figures, not assertions: the machine is shared.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WARM_TARGET, COLD_TARGET = 1.0, 5.0


def one_run(scenario: Path, artifacts: Path, cold: bool) -> dict[str, float | str]:
    """One ``slatcheck run`` in a new process: wall time, result phases and start kind."""
    cmd = [sys.executable, "-m", "harness", "run", str(scenario), "--artifacts",
           str(artifacts), "-q", *(["--cold"] if cold else [])]
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t
    [result] = sorted(artifacts.glob("*/result.json"), key=lambda p: p.stat().st_mtime)[-1:]
    res = json.loads(result.read_text())
    row: dict[str, float | str] = {k: float(v) for k, v in res["phases"].items()}
    row.update(end_to_end=wall, in_process=float(res["duration"]),
               start=str(res["provenance"]["machine"].get("start", "?")),
               verdict=str(res["verdict"]), status=float(proc.returncode))
    return row


def show(label: str, rows: list[dict[str, float | str]]) -> dict[str, float]:
    """Print the runs and their medians; return the medians."""
    keys = [k for k in rows[0] if isinstance(rows[0][k], float) and k != "status"]
    for i, r in enumerate(rows, 1):
        print(f"{label} run {i}: {r['verdict']} ({r['start']})  " +
              "  ".join(f"{k} {float(r[k]):.2f}" for k in keys))
    med = {k: statistics.median(float(r[k]) for r in rows) for k in keys}
    print(f"{label} median: " + "  ".join(f"{k} {v:.2f}" for k, v in med.items()))
    return med


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("scenario", nargs="?", type=Path,
                    default=ROOT / "scenarios" / "linux" / "kvm-npt-smoke.yaml")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    print(f"machine: {platform.node()}, {os.cpu_count()} cores, load "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}; scenario {args.scenario.name}")
    with tempfile.TemporaryDirectory() as tmp:
        art = Path(tmp)
        cold = [one_run(args.scenario, art / "cold", True) for _ in range(args.runs)]
        first = one_run(args.scenario, art / "warm0", False)
        print(f"first warm-enabled run: {first['start']} ({float(first['end_to_end']):.2f} s)")
        warm = [one_run(args.scenario, art / "warm", False) for _ in range(args.runs)]
    c, w = show("cold", cold), show("warm", warm)
    ok = all(r["verdict"] == "pass" for r in cold + warm) and \
        all(r["start"] == "warm" for r in warm)
    print(f"end to end: cold {c['end_to_end']:.2f} s (target <= {COLD_TARGET:g}: "
          f"{'met' if c['end_to_end'] <= COLD_TARGET else 'not met'}), "
          f"warm {w['end_to_end']:.2f} s (target <= {WARM_TARGET:g}: "
          f"{'met' if w['end_to_end'] <= WARM_TARGET else 'not met'}); "
          f"in the process: cold {c['in_process']:.2f} s, warm {w['in_process']:.2f} s")
    print(f"warm / cold: {w['end_to_end'] / c['end_to_end']:.3f} "
          f"(cold is {c['end_to_end'] / w['end_to_end']:.1f}x the warm time)")
    print("result", "OK" if ok else "WRONG: a run failed or was not warm")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
