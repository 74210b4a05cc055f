"""Figures for reading L1 memory: the harness's RSP target, a plain RSP client, gdb, pmemsave.

Run:  python benchmarks/bench_reads.py [--size MiB] [--runs N]

Boots one x86 L1 and, with it halted, measures (the gdbstub takes one client at
a time; the harness target, the plain client and pmemsave are timed in turns over
the same connection and halt, so that the shared machine's load hits them alike):

* the harness target (:class:`harness.rsp.RspTarget`): 8-byte physical reads
  (latency) and a bulk physical read (MB/s);
* a plain remote-protocol client written here in a few lines: one ``m`` packet
  of the largest size at a time, no pipelining, no checks beyond the framing;
* gdb over GDB/MI (:class:`harness.gdb.GdbTarget`), the previous path;
* QMP ``pmemsave`` of the same range into a file.

Prints medians of *N* runs and the ratios (targets: harness bulk >= 80 % of the
plain client, small read <= 60 us).  Figures, not assertions.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from harness.arch import ARCHES  # noqa: E402
from harness.console import Console  # noqa: E402
from harness.guests import GUEST_OSES  # noqa: E402
from harness.images import build_image  # noqa: E402
from harness.machines.base import MachineConfig  # noqa: E402
from harness.machines.qemu import QemuMachine  # noqa: E402

BASE = 0x1000000
SMALL_TARGET_US, BULK_TARGET = 60.0, 0.80


class PlainRsp:
    """The least a remote-protocol client needs: framing, no-ack, sequential ``m``.

    Given *sock*, it speaks over a connection another client negotiated (no-ack and
    physical mode already on), so that both can be timed in turns, under the same load.
    """

    def __init__(self, path: Path, sock: socket.socket | None = None,
                 chunk: int = 0) -> None:
        self.buf = b""
        if sock is not None:
            self.s, self.chunk = sock, chunk
            return
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.connect(str(path))
        size = self.ask(b"qSupported:multiprocess+")
        self.chunk = (int(re.search(rb"PacketSize=([0-9a-f]+)", size).group(1), 16) - 4) // 2  # type: ignore[union-attr]
        self.ask(b"QStartNoAckMode")
        self.ask(b"Qqemu.PhyMemMode:1")

    def ask(self, data: bytes) -> bytes:
        self.s.sendall(b"$%s#%02x" % (data, sum(data) & 0xFF))
        while True:
            start = self.buf.find(b"$")
            end = self.buf.find(b"#", start)
            if start >= 0 and end >= 0 and len(self.buf) >= end + 3:
                out, self.buf = self.buf[start + 1:end], self.buf[end + 3:]
                if out[:1] != b"T":                   # a stop reply pushed on connect
                    return out
                continue
            self.buf += self.s.recv(65536)

    def read(self, addr: int, size: int) -> bytes:
        out = []
        for a in range(addr, addr + size, self.chunk):
            out.append(bytes.fromhex(self.ask(b"m%x,%x" % (a, min(self.chunk,
                                                                  addr + size - a))).decode()))
        return b"".join(out)

    def close(self) -> None:
        self.ask(b"Qqemu.PhyMemMode:0")
        self.ask(b"D;1")
        self.s.close()


def timed(fn: Callable[[], object], runs: int) -> float:
    """Median seconds of *runs* calls."""
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def in_turns(fns: dict[str, Callable[[], object]], runs: int) -> dict[str, float]:
    """Median seconds of each function, the functions called in turns (same load)."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(runs):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


SMALL = 500          # 8-byte reads per timed batch


def small_batch(read: Callable[[int, int], bytes]) -> None:
    """SMALL reads of 8 bytes, walking a page."""
    for i in range(SMALL):
        read(BASE + 8 * (i % 512), 8)


def small_latency(read: Callable[[int, int], bytes], n: int = 2000) -> float:
    """Seconds per 8-byte read, the median of 5 batches of *n*."""
    def batch() -> None:
        for i in range(n):
            read(BASE + 8 * (i % 512), 8)
    return timed(batch, 5) / n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=8, help="MiB per bulk read")
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    size, runs = args.size << 20, args.runs
    print(f"machine: {platform.node()}, {os.cpu_count()} cores, load "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    img = build_image("linux-amd64", progress=lambda s: None)
    rows: dict[str, tuple[float, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        art = Path(tmp)
        config = MachineConfig(arch=ARCHES[img.arch], boot=img.boot_spec(), cpu="max,-la57",
                               artifacts=art, name="bench")
        with QemuMachine(config) as m, Console.connect(
                m.console, log_path=art / "console.log",
                profile=GUEST_OSES["linux"].console) as con:
            con.wait_for_shell(timeout=300)
            dump = art / "pmem.bin"

            def same_as_pmemsave(data: bytes, who: str) -> None:
                """Each reader against QEMU's own dump, in the same halt."""
                m.pmemsave(BASE, size, dump)
                assert dump.read_bytes() == data, f"{who} read other bytes than pmemsave"
            with m.open_target(art) as t, t.halted():
                same_as_pmemsave(t.read_phys(BASE, size), "the harness target")
                c = t.client                                   # type: ignore[attr-defined]
                plain = PlainRsp(m.gdb_path, c._sock, c.max_read)   # same connection
                same_as_pmemsave(plain.read(BASE, size), "the plain client")
                bulk = in_turns({"harness": lambda: t.read_phys(BASE, size),
                                 "plain": lambda: plain.read(BASE, size),
                                 "pmemsave": lambda: m.pmemsave(BASE, size, dump)}, runs)
                small = in_turns({"harness": lambda: small_batch(t.read_phys),
                                  "plain": lambda: small_batch(plain.read)}, 5 * runs)
                rows["harness RSP target"] = (small["harness"] / SMALL, size / bulk["harness"])
                rows["plain RSP client"] = (small["plain"] / SMALL, size / bulk["plain"])
                rows["QMP pmemsave"] = (float("nan"), size / bulk["pmemsave"])
            with m.open_gdb_target(art) as g, g.halted():
                same_as_pmemsave(g.read_phys(BASE, size), "gdb")
                rows["gdb (GDB/MI)"] = (small_latency(g.read_phys, 200),
                                        size / timed(lambda: g.read_phys(BASE, size), 2))
    print(f"{'reader':<22} {'8-byte read':>12} {'bulk':>12}   ({args.size} MiB, median of "
          f"{runs})")
    for name, (lat, bw) in rows.items():
        small_read = "        - " if lat != lat else f"{lat * 1e6:9.1f} us"   # NaN: no small read
        print(f"{name:<22} {small_read} {bw / 1e6:8.1f} MB/s")
    h_lat, h_bw = rows["harness RSP target"]
    p_bw, g_bw = rows["plain RSP client"][1], rows["gdb (GDB/MI)"][1]
    print(f"harness bulk / plain client: {h_bw / p_bw:.2f} (target >= {BULK_TARGET:.2f}: "
          f"{'met' if h_bw / p_bw >= BULK_TARGET else 'not met'}); harness / gdb: "
          f"{h_bw / g_bw:.1f}x; pmemsave / harness: {rows['QMP pmemsave'][1] / h_bw:.1f}x")
    print(f"harness small read: {h_lat * 1e6:.1f} us (target <= {SMALL_TARGET_US:g}: "
          f"{'met' if h_lat * 1e6 <= SMALL_TARGET_US else 'not met'})")
    print("result OK (every reader read the same bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
