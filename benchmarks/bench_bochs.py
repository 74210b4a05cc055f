"""Figures for the Bochs machine: warm start, and reads through Bochs's debugger.

Run:  python benchmarks/bench_bochs.py [--runs N]

Needs the warm state a Bochs scenario leaves (run ``slatcheck run
scenarios/linux/kvm-ept-smoke.yaml`` once).  Per run it restores the saved L1 and
prints the time to Bochs's first debugger prompt, to an answering shell, then the
median latency of a register read, of ``xp`` of one page, and of ``writemem`` of
1 MiB of physical memory through the L1's direct map (the first bulk read also
finds the direct map).  Figures, not assertions: compare them between commits.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from harness.arch import ARCHES  # noqa: E402
from harness.console import Console  # noqa: E402
from harness.guests import GUEST_OSES  # noqa: E402
from harness.images import build_image  # noqa: E402
from harness.machines.base import MachineConfig  # noqa: E402
from harness.machines.bochs import BochsMachine  # noqa: E402
from harness.warm import WarmState  # noqa: E402

MIB = 1 << 20


def median_ms(fn: object, n: int = 5) -> float:
    times = []
    for _ in range(n):
        t = time.monotonic()
        fn()  # type: ignore[operator]
        times.append(time.monotonic() - t)
    return 1000 * statistics.median(times)


def one_run(config: MachineConfig) -> None:
    t0 = time.monotonic()
    with BochsMachine(config) as m, \
            Console.connect(m.console, log_path=config.artifacts / "console.log",
                            profile=GUEST_OSES["linux"].console) as con:
        prompt = time.monotonic() - t0
        con.wait_for_shell(120)
        shell = time.monotonic() - t0
        with m.open_target(config.artifacts) as t, t.halted():
            reg = median_ms(lambda: t.register("cr3"))
            page = median_ms(lambda: t.read_phys(0x100000, 4096))
            t1 = time.monotonic()
            t.read_phys(0x200000, MIB)
            first_bulk = 1000 * (time.monotonic() - t1)
            bulk = median_ms(lambda: t.read_phys(0x200000, MIB))
    print(f"restore to prompt {prompt:6.1f} s   to shell {shell:6.1f} s   register "
          f"{reg:6.1f} ms   xp 4 KiB {page:6.1f} ms   1 MiB via direct map {bulk:6.1f} ms "
          f"(first, finding it: {first_bulk:6.1f} ms)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    image = build_image("linux-amd64-vmx", progress=lambda line: None)
    with tempfile.TemporaryDirectory() as tmp:
        config = MachineConfig(arch=ARCHES["x86_64"], boot=image.boot_spec(),
                               artifacts=Path(tmp), cpu="max", memory=512 * MIB,
                               name="kvm-ept-smoke")
        warm = WarmState.for_key(image, BochsMachine(config).state_key())
        if not warm.ready():
            print("no warm state: run scenarios/linux/kvm-ept-smoke.yaml once first")
            return 1
        for _ in range(args.runs):
            one_run(replace(config, incoming=warm.state))
    return 0


if __name__ == "__main__":
    sys.exit(main())
