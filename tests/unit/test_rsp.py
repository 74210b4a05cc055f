"""The remote-protocol client against a fake gdbstub: framing, acks, escapes, run lengths,
pipelined reads, registers from the target description, breakpoints, writes, errors.

The fake stub is written from the GDB manual's "Remote Protocol" chapter, apart
from the client: it parses packets itself, answers with run-length encoded and
escaped replies where the protocol allows, and keeps its own memory.
"""

from __future__ import annotations

import re
import socket
import threading
from collections.abc import Iterator

import pytest

from harness.errors import MemoryReadError
from harness.rsp import RspClient, RspError, RspTarget, decode_payload, escape

X86_XML = {
    "target.xml": '<?xml version="1.0"?><!DOCTYPE target SYSTEM "gdb-target.dtd">'
                  '<target><architecture>i386:x86-64</architecture>'
                  '<xi:include href="core.xml" xmlns:xi="http://www.w3.org/2001/XInclude"/>'
                  '<xi:include href="sys.xml" xmlns:xi="http://www.w3.org/2001/XInclude"/>'
                  '</target>',
    "core.xml": '<feature name="core"><reg name="rax" bitsize="64"/>'
                '<reg name="eflags" bitsize="32"/><reg name="rip" bitsize="64" regnum="16"/>'
                '</feature>',
    "sys.xml": '<feature name="sys"><reg name="cr3" bitsize="64" regnum="40"/>'
               '<reg name="cr4" bitsize="64"/></feature>',
}
REGS = {(1, 0): 0x1122334455667788, (1, 1): 0x246, (1, 40): 0x1234000, (1, 41): 0x3506F0,
        (2, 41): 0x3406F0}
BITS = {0: 64, 1: 32, 16: 64, 40: 64, 41: 64}


def rle(hexdata: str) -> str:
    """Run-length encode as a stub may (runs of 4..97, never giving '#', '$' or '+')."""
    out, i = [], 0
    while i < len(hexdata):
        c = hexdata[i]
        j = i
        while j < len(hexdata) and hexdata[j] == c and j - i < 97:
            j += 1
        run = j - i - 1
        while run + 29 in (ord("#"), ord("$"), ord("+"), ord("-")) and run > 0:
            run -= 1
        if run >= 3:
            out.append(c + "*" + chr(run + 29))
            i += run + 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


class FakeStub(threading.Thread):
    """A gdbstub over one end of a socketpair, with acks until QStartNoAckMode."""

    def __init__(self, sock: socket.socket, *, packet_size: int = 0x400,
                 stop_on_connect: bool = True, corrupt_first: bool = False) -> None:
        super().__init__(daemon=True)
        self.sock = sock
        self.packet_size = packet_size
        self.mem = bytearray(range(256)) * 256          # 64 KiB of phys memory
        self.virt = {0xFFFF0000: 0x100}                  # one virtual page -> phys offset
        self.ack = True
        self.phys = 0
        self.running = False
        self.thread = 1
        self.breaks: set[int] = set()
        self.log: list[bytes] = []
        self.in_flight_max = 0
        self.stop_on_connect = stop_on_connect
        self.corrupt_first = corrupt_first
        self.buf = bytearray()
        self.last = b""
        self.naks = 0

    def send(self, payload: str, *, encode: bool = True) -> None:
        data = payload.encode("latin-1")
        cs = sum(data) & 0xFF
        if self.corrupt_first:
            self.corrupt_first = False
            cs ^= 1
        self.last = b"$" + data + b"#%02x" % (sum(data) & 0xFF)   # resent after a '-'
        self.sock.sendall(b"$" + data + b"#%02x" % cs)

    def packets(self) -> Iterator[bytes]:
        while True:
            while True:
                if self.buf[:1] == b"\x03":
                    del self.buf[:1]
                    yield b"\x03"
                    continue
                if self.buf[:1] == b"-":
                    del self.buf[:1]
                    self.naks += 1
                    self.sock.sendall(self.last)
                    continue
                if self.buf[:1] == b"+":
                    del self.buf[:1]
                    continue
                m = re.match(rb"\$([^#]*)#([0-9a-f]{2})", bytes(self.buf))
                if m:
                    break
                chunk = self.sock.recv(65536)
                if not chunk:
                    return
                self.buf += chunk
            del self.buf[:m.end()]
            assert int(m.group(2), 16) == sum(m.group(1)) & 0xFF, "client checksum"
            self.in_flight_max = max(self.in_flight_max, self.buf.count(b"$") + 1)
            if self.ack:
                self.sock.sendall(b"+")
            yield m.group(1)

    def run(self) -> None:
        try:
            if self.stop_on_connect:
                self.send("T05thread:01;")               # unsolicited, as QEMU may
            for pkt in self.packets():
                self.log.append(pkt)
                if not self.handle(pkt):
                    return
        except OSError:
            pass

    def handle(self, pkt: bytes) -> bool:
        p = pkt.decode("latin-1")
        if p == "\x03":
            if self.running:
                self.running = False
                self.send("T02thread:p01.01;")
        elif p.startswith("qSupported"):
            self.send(f"PacketSize={self.packet_size:x};qXfer:features:read+;"
                      "QStartNoAckMode+;swbreak+")
        elif p == "QStartNoAckMode":
            self.send("OK")
            self.ack = False
        elif p == "?":
            self.send("T05thread:01;")
        elif p == "c":
            self.running = True
        elif p == "D;1":
            self.send("OK")
            return False
        elif p.startswith("Qqemu.PhyMemMode:"):
            self.phys = int(p[-1])
            self.send("OK")
        elif p.startswith("Hgp1."):
            self.thread = int(p[5:], 16) or 1
            self.send("OK")
        elif p.startswith("qXfer:features:read:"):
            annex, rng = p[len("qXfer:features:read:"):].split(":")
            off, length = (int(x, 16) for x in rng.split(","))
            text = X86_XML[annex]
            part = text[off:off + length]
            self.send(("l" if off + length >= len(text) else "m") + escape(
                part.encode()).decode("latin-1"))
        elif p.startswith("p"):
            n = int(p[1:], 16)
            value = REGS.get((self.thread, n), 0)
            self.send(rle(value.to_bytes(BITS[n] // 8, "little").hex()))
        elif p.startswith("m"):
            self.read(p)
        elif p.startswith("M"):
            head, data = p[1:].split(":")
            addr, length = (int(x, 16) for x in head.split(","))
            raw = bytes.fromhex(data)
            assert len(raw) == length and len(pkt) + 4 <= self.packet_size
            self.mem[addr:addr + length] = raw
            self.send("OK")
        elif p[:2] in ("Z0", "z0"):
            addr = int(p.split(",")[1], 16)
            (self.breaks.add if p[0] == "Z" else self.breaks.discard)(addr)
            self.send("OK")
        else:
            self.send("")                                  # not supported
        return True

    def read(self, p: str) -> None:
        addr, length = (int(x, 16) for x in p[1:].split(","))
        assert not self.running, "read while running"
        if 2 * length + 4 > self.packet_size:
            self.send("E22")
            return
        if not self.phys:
            page = addr & ~0xFFF
            if page not in self.virt:
                self.send("E14")
                return
            addr = self.virt[page] + (addr & 0xFFF)
        if addr + length > len(self.mem):
            self.send("E14")
            return
        self.send(rle(bytes(self.mem[addr:addr + length]).hex()))


@pytest.fixture
def stub() -> Iterator[tuple[FakeStub, RspClient]]:
    a, b = socket.socketpair()
    fake = FakeStub(b)
    fake.mem[0x2000:0x3000] = bytes(0x1000)                 # a page of zeros: long runs
    fake.mem[0x3000:0x3004] = b"$#}*"                       # bytes that need escaping
    fake.start()
    client = RspClient("fake", connect=lambda path: a, timeout=5.0)
    with client:
        yield fake, client
    fake.join(2)
    b.close()


def test_framing_checksums_and_no_ack(stub: tuple[FakeStub, RspClient]) -> None:
    fake, c = stub
    assert not c.ack and not fake.ack and c.packet_size == 0x400
    assert c.max_read == (0x400 - 4) // 2
    assert fake.log[0].startswith(b"qSupported") and b"QStartNoAckMode" in fake.log


def test_bulk_read_is_pipelined_and_exact(stub: tuple[FakeStub, RspClient]) -> None:
    fake, c = stub
    c.set_phys(True)
    data = c.read(0x123, 0x8000)
    assert data == bytes(fake.mem[0x123:0x8123])
    assert fake.in_flight_max > 4                           # several requests at once
    assert max(int(p[1:].split(b",")[1], 16) for p in fake.log if p[:1] == b"m") == c.max_read


def test_run_length_and_escapes_decode(stub: tuple[FakeStub, RspClient]) -> None:
    fake, c = stub
    c.set_phys(True)
    assert c.read(0x2000, 0x1000) == bytes(0x1000)
    assert c.read(0x3000, 4) == b"$#}*"
    assert decode_payload(b"a*\x20") == b"aaaa"              # 0x20 - 29 = 3 more
    assert decode_payload(b"}\x04}]") == b"$}"


def test_registers_by_target_description(stub: tuple[FakeStub, RspClient]) -> None:
    fake, c = stub
    regs = c.registers()
    assert (regs["cr3"].number, regs["cr4"].number, regs["eflags"].number) == (40, 41, 1)
    assert c.register("rax") == 0x1122334455667788
    assert c.register("eflags") == 0x246
    assert c.register("cr4") == 0x3506F0
    assert c.register("cr4", cpu=1) == 0x3406F0 and fake.thread == 1   # back to CPU 0
    with pytest.raises(RspError, match="not in the target description"):
        c.register("nosuch")


def test_target_over_the_client(stub: tuple[FakeStub, RspClient]) -> None:
    fake, c = stub
    t = RspTarget(c, ram_ranges=lambda: [(0, 1 << 16)], translate=lambda va: va)
    c.cont()
    assert fake.running or c.running
    with t.halted():
        assert not c.running
        assert t.read_phys(0x10, 4) == bytes(fake.mem[0x10:0x14])
        assert t.read_virt(0xFFFF0008, 2) == bytes(fake.mem[0x108:0x10A])
        t.write_phys(0x500, b"SLAT" * 300)                  # more than one M packet
        assert bytes(fake.mem[0x500:0x500 + 1200]) == b"SLAT" * 300
        assert t.register("cr3") == 0x1234000
    assert c.running                                         # resumed after the block
    with t.halted():
        pass
    assert [p for p in fake.log if p.startswith(b"M")][1:] != []


def test_failed_reads_raise_and_the_stream_stays_in_step(
        stub: tuple[FakeStub, RspClient]) -> None:
    fake, c = stub
    c.set_phys(True)
    with pytest.raises(MemoryReadError):
        c.read(0xF000, 0x4000)                               # past the fake's 64 KiB
    assert c.read(0x40, 3) == bytes(fake.mem[0x40:0x43])   # replies still match requests
    c.set_phys(False)
    with pytest.raises(MemoryReadError):
        c.read(0x1000, 8)                                     # unmapped virtual page


def test_breakpoints_are_set_and_removed_on_close() -> None:
    a, b = socket.socketpair()
    fake = FakeStub(b)
    fake.start()
    with RspClient("fake", connect=lambda path: a, timeout=5.0) as c:
        c.insert_breakpoint(0xFFFFFFFF81000000)
        assert fake.breaks == {0xFFFFFFFF81000000}
        c.set_phys(True)
        c.cont()
    fake.join(2)
    assert fake.breaks == set() and fake.phys == 0            # removed, mode restored
    assert fake.log[-1] == b"D;1"


def test_bad_checksum_is_asked_again_while_acking() -> None:
    a, b = socket.socketpair()
    fake = FakeStub(b, stop_on_connect=False, corrupt_first=True)
    fake.start()
    with RspClient("fake", connect=lambda path: a, timeout=5.0) as c:
        assert c.packet_size == 0x400
    fake.join(2)
    assert fake.naks == 1                                 # the bad reply was asked again


def test_lost_stub_is_an_infra_error() -> None:
    a, b = socket.socketpair()
    b.close()
    with pytest.raises(RspError):
        RspClient("fake", connect=lambda path: a, timeout=1.0).open()


class BreakingStub(FakeStub):
    """A stub whose L1 reaches its lowest breakpoint at once after each ``c`` (if any),
    and otherwise runs until interrupted."""

    def handle(self, pkt: bytes) -> bool:
        if pkt == b"c" and self.breaks:
            REGS[(self.thread, 16)] = min(self.breaks)
            self.send("T05thread:p01.01;swbreak:;")
            return True
        return super().handle(pkt)


def test_the_target_stops_at_a_breakpoint_and_leaves_the_l1_stopped() -> None:
    """kvm-*-teardown-break: the RSP target is a Breakpoints and a Leavable target."""
    from harness.target import Breakpoints, BreakpointTimeout, Leavable
    a, b = socket.socketpair()
    fake = BreakingStub(b)
    fake.start()
    with RspClient("fake", connect=lambda path: a, timeout=5.0) as c:
        t = RspTarget(c, ram_ranges=lambda: [(0, 1 << 16)], translate=lambda va: va)
        assert isinstance(t, Breakpoints) and isinstance(t, Leavable)
        c.cont()
        with pytest.raises(BreakpointTimeout):              # no breakpoint: L1 runs on
            t.wait_stop(0.3)
        assert c.running
        t.set_breakpoint(0xFFFFFFFF81234560)
        assert fake.breaks == {0xFFFFFFFF81234560} and c.running   # set, L1 running again
        assert t.wait_stop(5.0) == 0xFFFFFFFF81234560 and not c.running
        t.clear_breakpoint(0xFFFFFFFF81234560)
        assert fake.breaks == set()
        t.resume()
        assert c.running
        t.set_breakpoint(0xFFFFFFFF81000000)
        t.leave_stopped()
    fake.join(2)
    assert fake.breaks == set() and not fake.running        # removed, L1 left stopped
    assert b"D;1" not in fake.log                            # no detach: QEMU keeps it stopped
