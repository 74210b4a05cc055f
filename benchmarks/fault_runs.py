"""Faulted runs in a row: kill or signal the harness, QEMU or gdb at a random moment,
then count orphans, leftover scratch directories and exit statuses.

Run:  python benchmarks/fault_runs.py [--runs 100] [--seed 1] [--cold] [SCENARIO]

A first clean run measures how long a run takes (warm starts make the smoke run a few
seconds; ``--cold`` boots every time); each faulted run then starts ``slatcheck run`` in
a private TMPDIR, waits a random time within that duration,
then applies one fault: SIGINT, SIGINT twice, SIGTERM, SIGKILL of the harness, SIGKILL
of QEMU, SIGKILL of gdb.  Afterwards it waits for every process the run started to be
gone (a killed harness's QEMU dies with it: PR_SET_PDEATHSIG) and lets the next run
sweep what a killed run could not remove.  Figures, not assertions.
"""

from __future__ import annotations

import argparse
import collections
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FAULTS = ("sigint", "sigint-twice", "sigterm", "kill-harness", "kill-qemu", "kill-gdb")


def descendants(pid: int) -> list[int]:
    """Live descendants of *pid*."""
    kids: dict[int, list[int]] = collections.defaultdict(list)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] not in "ZX":
            kids[int(fields[1])].append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for k in kids[todo.pop()]:
            out.append(k)
            todo.append(k)
    return out


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in "ZX"
    except OSError:
        return False


def one_run(scenario: Path, fault: str, delay: float, tmp: Path,
            extra: tuple[str, ...] = ()) -> tuple[int | None, list[int]]:
    env = {**os.environ, "TMPDIR": str(tmp)}
    proc = subprocess.Popen([sys.executable, "-m", "harness", "run", str(scenario), "-q",
                             "--no-history", *extra,
                             "--artifacts", str(tmp / "art")], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(delay)
    family = descendants(proc.pid)
    names = {p: comm(p) for p in family}
    if fault == "sigint":
        proc.send_signal(signal.SIGINT)
    elif fault == "sigint-twice":
        proc.send_signal(signal.SIGINT)
        time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
    elif fault == "sigterm":
        proc.send_signal(signal.SIGTERM)
    elif fault == "kill-harness":
        proc.kill()
    elif fault in ("kill-qemu", "kill-gdb"):
        want = "qemu" if fault == "kill-qemu" else "gdb"
        for p, n in names.items():
            if n.startswith(want):
                os.kill(p, signal.SIGKILL)
    try:
        status: int | None = proc.wait(timeout=300)
    except subprocess.TimeoutExpired:
        proc.kill()
        status = None
    deadline = time.monotonic() + 10
    while any(alive(p) for p in family) and time.monotonic() < deadline:
        time.sleep(0.1)
    return status, [p for p in family if alive(p)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("scenario", nargs="?", type=Path,
                    default=ROOT / "scenarios" / "linux" / "kvm-npt-smoke.yaml")
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--cold", action="store_true", help="boot every run (no warm start)")
    args = ap.parse_args()
    extra = ("--cold",) if args.cold else ()
    rng = random.Random(args.seed)
    tmp = Path(tempfile.mkdtemp(prefix="fault-runs-"))
    statuses: collections.Counter[tuple[str, int | None]] = collections.Counter()
    orphans = 0
    t0 = time.monotonic()
    try:
        one_run(args.scenario, "none", 0, tmp, extra)       # a warm state, if warm
        t1 = time.monotonic()
        one_run(args.scenario, "none", 0, tmp, extra)
        span = time.monotonic() - t1
        print(f"a clean run takes {span:.1f} s; faults land within it", flush=True)
        for _ in range(args.runs):
            fault = rng.choice(FAULTS)
            status, left = one_run(args.scenario, fault, rng.uniform(0.1, span), tmp, extra)
            statuses[(fault, status)] += 1
            orphans += len(left)
            for p in left:
                os.kill(p, signal.SIGKILL)
        # one last clean run sweeps the scratch directories of killed runs
        one_run(args.scenario, "none", 0, tmp, extra)
        leftover = [p.name for p in tmp.iterdir() if p.name.startswith("slc-")]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{args.runs} faulted runs in {time.monotonic() - t0:.0f} s: {orphans} orphan "
          f"process(es), {len(leftover)} leftover scratch director(ies) {leftover}")
    for (fault, status), n in sorted(statuses.items(), key=str):
        print(f"  {fault:14} exit {status}: {n}")


if __name__ == "__main__":
    main()
