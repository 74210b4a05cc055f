"""Figures for the spine: a cold scenario's wall time by phase, and GDB read throughput.

Run:  python benchmarks/bench_scenario.py [SCENARIO] [--runs N]

Prints, per run, the time in each phase (image, boot, workload, extraction,
diff, ...) from the scenario's result.json, then boots one more L1 and
measures GDB reads: small-read latency (8 bytes, physical mode) and bulk
throughput for a few sizes, compared with QMP ``pmemsave`` of the same range.
Figures, not assertions: compare them between commits.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from harness.arch import ARCHES  # noqa: E402
from harness.console import Console  # noqa: E402
from harness.gdb import GdbSession  # noqa: E402
from harness.guests import GUEST_OSES  # noqa: E402
from harness.images import build_image  # noqa: E402
from harness.machines.base import MachineConfig  # noqa: E402
from harness.machines.qemu import QemuMachine  # noqa: E402
from harness.runner import run_scenario  # noqa: E402
from harness.scenario import load_scenario  # noqa: E402


def scenario_phases(path: Path, runs: int) -> None:
    """Run the scenario *runs* times; print the phases of each and their medians."""
    sc = load_scenario(path)
    rows: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(runs):
            res = run_scenario(sc, Path(tmp))
            phases = json.loads((res.artifacts / "result.json").read_text())["phases"]
            phases["total"] = res.duration
            rows.append(phases)
            print(f"run {i + 1}: {res.verdict:5} " +
                  "  ".join(f"{k} {v:6.2f}s" for k, v in phases.items()))
    keys = rows[0].keys()
    print("median:    " + "  ".join(f"{k} {statistics.median(r.get(k, 0) for r in rows):6.2f}s"
                                    for k in keys))


def gdb_throughput(reads: int = 200) -> None:
    """Small-read latency and bulk MB/s through the gdbstub, against QMP pmemsave."""
    img = build_image("linux-amd64", progress=lambda s: None)
    with tempfile.TemporaryDirectory() as tmp:
        art = Path(tmp)
        config = MachineConfig(arch=ARCHES[img.arch], boot=img.boot_spec(), cpu="max,-la57",
                               artifacts=art, name="bench")
        with QemuMachine(config) as m, \
                Console.connect(m.console, log_path=art / "console.log",
                                profile=GUEST_OSES["linux"].console) as con:
            con.wait_for_shell(timeout=180)
            with GdbSession(m.gdb_path, art / "gdb.log") as gdb, gdb.halted(), \
                    gdb.memory_mode(physical=True):
                t = time.perf_counter()
                for i in range(reads):
                    gdb.read_phys(0x100000 + 8 * i, 8)
                small = (time.perf_counter() - t) / reads
                print(f"gdb small read (8 B):   {small * 1e3:7.3f} ms")
                for size in (4096, 64 << 10, 1 << 20, 8 << 20):
                    t = time.perf_counter()
                    gdb.read_phys(0x1000000, size)
                    dt = time.perf_counter() - t
                    t = time.perf_counter()
                    m.pmemsave(0x1000000, size, art / "dump.bin")
                    dq = time.perf_counter() - t
                    print(f"bulk {size >> 10:6d} KiB: gdb {size / dt / 1e6:7.2f} MB/s   "
                          f"pmemsave {size / dq / 1e6:7.2f} MB/s   ratio {dt / dq:5.1f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("scenario", nargs="?", type=Path,
                    default=ROOT / "scenarios" / "linux" / "kvm-npt-smoke.yaml")
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--no-gdb", action="store_true", help="skip the GDB throughput part")
    args = ap.parse_args()
    scenario_phases(args.scenario, args.runs)
    if not args.no_gdb:
        gdb_throughput()


if __name__ == "__main__":
    main()
