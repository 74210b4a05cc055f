"""The GDB remote serial protocol spoken directly to QEMU's gdbstub: the fast Target.

:class:`RspClient` is a small client of the protocol (GDB manual, "Remote
Protocol") over the gdbstub's unix socket: packets ``$data#cs``, acknowledgements
until ``QStartNoAckMode``, binary escapes (``}`` then the byte XOR 0x20) and
run-length encoding (``c*N``: *N* - 29 more copies of ``c``) in replies.  It
asks ``qSupported`` for the stub's ``PacketSize`` and reads memory in the
largest ``m`` packets the stub accepts, several requests in flight at once
(replies come back in order), which is what makes it several times faster
than gdb driven over GDB/MI.  Registers are read by number (``p``), the
numbers taken from the target's XML description (``qXfer:features:read``,
its ``xi:include`` files followed), so ``register("cr4")`` and
``register("VTTBR_EL2")`` work as they do in gdb.  Breakpoints (``Z0``/``z0``),
memory writes (``M``), interrupt (0x03), continue (``c``) and QEMU's
physical-memory mode (``Qqemu.PhyMemMode``) complete it.

:class:`RspTarget` is the :class:`harness.target.Target` over a client; RAM
ranges and address translation come from the machine (QMP), as for
:class:`harness.gdb.GdbTarget`, which remains for what needs a real gdb.

>>> encode_packet(b"m1000,8")
b'$m1000,8#92'
>>> decode_payload(b"0*\\x2200")        # '0' then 5 more '0's, then '00'
b'00000000'
"""

from __future__ import annotations

import binascii
import contextlib
import re
import socket
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO

from harness.errors import InfraError, MemoryReadError

__all__ = ["RspError", "RspClient", "RspTarget", "Register", "encode_packet", "decode_payload",
           "escape", "parse_target_xml", "checksum"]

INTERRUPT = b"\x03"
WINDOW = 16                 # read requests in flight at once
DEFAULT_PACKET = 0x1000     # QEMU 7.2 advertises PacketSize=1000 (hex)


class RspError(InfraError):
    """The gdbstub is gone, answered garbage, or refused what must work."""


def checksum(data: bytes) -> int:
    """The packet checksum: the sum of the bytes modulo 256.

    >>> hex(checksum(b"OK"))
    '0x9a'
    """
    return sum(data) & 0xFF


def escape(data: bytes) -> bytes:
    """Binary data with ``$ # } *`` escaped as ``}`` and the byte XOR 0x20.

    >>> escape(b"a$b}")
    b'a}\\x04b}]'
    """
    out = bytearray()
    for b in data:
        if b in b"$#}*":
            out += bytes((0x7D, b ^ 0x20))
        else:
            out.append(b)
    return bytes(out)


def encode_packet(data: bytes) -> bytes:
    """``$data#cs`` (*data* already escaped where it is binary)."""
    return b"$" + data + b"#" + b"%02x" % checksum(data)


def decode_payload(data: bytes) -> bytes:
    """A reply's payload with escapes and run-length encoding undone.

    >>> decode_payload(b"}\\x03x")
    b'#x'
    """
    if b"}" not in data and b"*" not in data:
        return data
    out = bytearray()
    i, n = 0, len(data)
    while i < n:
        b = data[i]
        if b == 0x7D and i + 1 < n:            # escape
            out.append(data[i + 1] ^ 0x20)
            i += 2
        elif b == 0x2A and out and i + 1 < n:  # run length: repeat the last byte
            out += bytes((out[-1],)) * (data[i + 1] - 29)
            i += 2
        else:
            out.append(b)
            i += 1
    return bytes(out)


@dataclass(frozen=True)
class Register:
    """One register of the target description."""

    name: str
    number: int
    bits: int


def parse_target_xml(fetch: Callable[[str], str], annex: str = "target.xml") -> list[Register]:
    """Registers of a target description, numbered as the stub numbers them.

    *fetch(annex)* returns the XML text of one annex; ``xi:include`` files are
    followed in document order; a ``regnum`` attribute sets the number, the
    next registers count on from it.

    >>> docs = {"target.xml": '<target><xi:include href="a.xml" '
    ...         'xmlns:xi="http://www.w3.org/2001/XInclude"/></target>',
    ...         "a.xml": '<feature><reg name="rax" bitsize="64"/>'
    ...                  '<reg name="cr4" bitsize="64" regnum="30"/><reg name="efer" bitsize="64"/>'
    ...                  '</feature>'}
    >>> [(r.name, r.number) for r in parse_target_xml(docs.__getitem__)]
    [('rax', 0), ('cr4', 30), ('efer', 31)]
    """
    regs: list[Register] = []

    def walk(name: str, depth: int) -> None:
        if depth > 8:
            raise RspError(f"target description: includes nested too deep at {name}")
        # QEMU writes xi:include without declaring the prefix; ElementTree refuses that
        text = re.sub(r"<!DOCTYPE[^>]*>", "", fetch(name)).replace("xi:include", "include")
        root = ET.fromstring(text)
        for el in root.iter():
            tag = el.tag.rsplit("}", 1)[-1]
            if tag == "include":
                walk(el.attrib["href"], depth + 1)
            elif tag == "reg":
                number = int(el.attrib.get("regnum", regs[-1].number + 1 if regs else 0))
                regs.append(Register(el.attrib["name"], number, int(el.attrib["bitsize"])))
    walk(annex, 0)
    return regs


_STOP = re.compile(rb"^[TS][0-9a-fA-F]{2}|^[WX][0-9a-fA-F]{2}")


class RspClient:
    """One connection to a gdbstub on a unix socket; stops the L1 on connect.

    *log_path* (optional) receives one line per command (not memory payloads).
    """

    def __init__(self, path: Path | str, *, timeout: float = 30.0,
                 log_path: Path | str | None = None,
                 connect: Callable[[str], socket.socket] | None = None) -> None:
        self.path = str(path)
        self.timeout = timeout
        self._connect = connect or _unix_connect
        self._sock: socket.socket | None = None
        self._buf = bytearray()
        self._pos = 0                    # bytes of _buf already consumed
        self._log: IO[str] | None = open(log_path, "a", encoding="utf-8") if log_path else None
        self._t0 = time.monotonic()
        self.ack = True
        self.features: dict[str, str] = {}
        self.packet_size = DEFAULT_PACKET
        self.max_read = DEFAULT_PACKET // 2 - 2
        self.running = False
        self.mode: int | None = None
        self.breakpoints: set[int] = set()
        self._regs: dict[str, Register] | None = None
        self.last_stop = b""

    # -- life cycle -------------------------------------------------------------------

    def __enter__(self) -> RspClient:
        try:
            self.open()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def open(self) -> None:
        """Connect, negotiate features and no-ack mode; the L1 is stopped afterwards."""
        try:
            self._sock = self._connect(self.path)
        except OSError as exc:
            raise RspError(f"cannot connect to the gdbstub at {self.path}: {exc}") from exc
        self._sock.settimeout(self.timeout)
        reply = self.request(b"qSupported:multiprocess+;swbreak+;hwbreak+;xmlRegisters=i386",
                             skip_stops=True)
        for item in reply.decode(errors="replace").split(";"):
            key, _, value = item.partition("=")
            self.features[key.rstrip("+-")] = value or item[-1:]
        self.packet_size = int(self.features.get("PacketSize", f"{DEFAULT_PACKET:x}"), 16)
        self.max_read = (self.packet_size - 4) // 2
        if self.features.get("QStartNoAckMode") == "+" and self.request(
                b"QStartNoAckMode") == b"OK":
            self.ack = False
        self.last_stop = self.request(b"?")
        self.running = False

    def close(self) -> None:
        """Remove breakpoints, leave virtual mode, detach (QEMU resumes); close.

        Only a detach resumes the L1: QEMU leaves it stopped when the socket just closes.
        """
        self._end(detach=True)
        if self._log is not None:
            with contextlib.suppress(OSError):    # a full disk cannot take the last lines
                self._log.close()
            self._log = None

    # -- packets ----------------------------------------------------------------------

    def _note(self, direction: str, data: bytes) -> None:
        """One line of rsp.log; a log that cannot be written (full disk) is an InfraError."""
        if self._log is not None:
            text = data[:72].decode("latin-1")
            try:
                self._log.write(f"{time.monotonic() - self._t0:10.4f} {direction} {text!r}"
                                f"{' ...' if len(data) > 72 else ''}\n")
            except OSError as exc:
                raise RspError(f"cannot write the remote-protocol log: {exc}") from exc

    def _require(self) -> socket.socket:
        if self._sock is None:
            raise RspError("the gdbstub connection is closed")
        return self._sock

    def send(self, data: bytes) -> None:
        """Send one packet (not waiting for the reply)."""
        self._note(">", data)
        self.send_raw(encode_packet(data))

    def send_raw(self, raw: bytes) -> None:
        """Bytes as they are (several packets, or the interrupt byte)."""
        try:
            self._require().sendall(raw)
        except OSError as exc:
            raise RspError(f"lost the gdbstub (send: {exc})") from exc

    def _fill(self, timeout: float) -> None:
        """Read more bytes from the socket into the buffer, waiting up to *timeout*."""
        sock = self._sock
        if sock is None:
            raise RspError("the gdbstub connection is closed")
        short = timeout < self.timeout         # a timeout change is a system call: only
        if short:                              # for a wait shorter than the usual one
            sock.settimeout(max(timeout, 0.001))
        try:
            chunk = sock.recv(1 << 16)
        except TimeoutError as exc:
            raise RspError(f"the gdbstub did not answer within {timeout:g} s") from exc
        except OSError as exc:
            raise RspError(f"lost the gdbstub (recv: {exc})") from exc
        finally:
            if short:
                sock.settimeout(self.timeout)
        if not chunk:
            raise RspError("the gdbstub closed the connection (QEMU gone?)")
        if self._pos > 1 << 16:                # drop what was read, now and then
            del self._buf[:self._pos]
            self._pos = 0
        self._buf += chunk

    def _next_raw(self, timeout: float | None = None, verify: bool = True) -> bytes:
        """The next packet's payload as sent; acks and noise before ``$`` skipped.

        The checksum is checked unless *verify* is False in no-ack mode (memory
        replies, whose length and hex digits are checked instead: the socket is
        reliable, which is what no-ack mode relies on).
        """
        buf = self._buf
        wait = self.timeout if timeout is None else timeout
        while True:                  # each recv waits up to *wait* (the stub answers or dies)
            start = buf.find(b"$", self._pos)
            end = buf.find(b"#", start + 1) if start >= 0 else -1
            if start >= 0 and end >= 0 and len(buf) >= end + 3:
                break
            self._fill(wait)
        raw = bytes(buf[start + 1:end])
        self._pos = end + 3
        if verify or self.ack:
            want = bytes(buf[end + 1:end + 3])
            if b"%02x" % checksum(raw) != want.lower():
                if self.ack:
                    self.send_raw(b"-")
                    return self._next_raw(timeout)
                raise RspError(f"bad checksum {want!r} on a reply from the gdbstub")
        if self.ack:
            self.send_raw(b"+")
        return raw

    def receive(self, timeout: float | None = None) -> bytes:
        """The next packet's payload (decoded, logged)."""
        data = decode_payload(self._next_raw(timeout))
        self._note("<", data)
        return data

    def request(self, data: bytes, timeout: float | None = None,
                skip_stops: bool = False) -> bytes:
        """Send one packet and return its reply (a stray stop reply skipped if asked)."""
        self.send(data)
        while True:
            reply = self.receive(timeout)
            if not (skip_stops and _STOP.match(reply)):
                return reply

    def ok(self, data: bytes) -> None:
        """A request that must answer ``OK``."""
        reply = self.request(data)
        if reply != b"OK":
            raise RspError(f"the gdbstub refused {data[:40]!r}: {reply[:40]!r}")

    # -- run control ------------------------------------------------------------------

    def interrupt(self) -> None:
        """Stop the L1 (all CPUs) and wait for the stop reply."""
        if self.running:
            self._note(">", INTERRUPT)
            self.send_raw(INTERRUPT)
            self.wait_stop()

    def wait_stop(self, timeout: float | None = None) -> bytes:
        """Wait for the stop reply of a running L1 (interrupt, breakpoint)."""
        while True:
            reply = self.receive(timeout)
            if _STOP.match(reply):
                self.running = False
                self.last_stop = reply
                if reply[:1] in (b"W", b"X"):
                    raise RspError(f"the L1 exited: {reply!r}")
                return reply

    def cont(self) -> None:
        """Let the L1 run (no reply until it stops)."""
        if not self.running:
            self.send(b"c")
            self.running = True

    @contextlib.contextmanager
    def halted(self) -> Iterator[None]:
        """Stop the L1 for the block, then continue; stopped on entry: stay stopped."""
        if not self.running:
            yield
            return
        self.interrupt()
        try:
            yield
        finally:
            if self._sock is not None:
                self.cont()

    def leave_stopped(self) -> None:
        """Stop the L1, remove breakpoints, leave virtual mode and close the socket
        without detaching: QEMU keeps the L1 stopped for the next client."""
        self._end(detach=False)

    def _end(self, detach: bool) -> None:
        """Stop the L1, remove breakpoints, leave physical mode, detach if asked (only a
        detach resumes the L1), close the socket; errors on the way are ignored."""
        sock = self._sock
        if sock is None:
            return
        with contextlib.suppress(InfraError, OSError):
            self.interrupt()
            for addr in sorted(self.breakpoints):
                self.remove_breakpoint(addr)
            if self.mode == 1:
                self.set_phys(False)
            if detach:
                self.request(b"D;1", timeout=5.0)   # process 1: QEMU's only one
        self._sock = None
        with contextlib.suppress(OSError):
            sock.close()

    def insert_breakpoint(self, addr: int, kind: int = 1) -> None:
        """A software breakpoint at virtual *addr* (``Z0``); the L1 must be stopped."""
        self.ok(b"Z0,%x,%x" % (addr, kind))
        self.breakpoints.add(addr)

    def remove_breakpoint(self, addr: int, kind: int = 1) -> None:
        """Remove the breakpoint at *addr* (``z0``)."""
        self.ok(b"z0,%x,%x" % (addr, kind))
        self.breakpoints.discard(addr)

    # -- memory -----------------------------------------------------------------------

    def set_phys(self, physical: bool) -> None:
        """QEMU's physical-memory mode on or off (global in the stub)."""
        want = 1 if physical else 0
        if self.mode != want:
            self.ok(b"Qqemu.PhyMemMode:%d" % want)
            self.mode = want

    def read(self, addr: int, size: int) -> bytes:
        """*size* bytes at *addr* in the current mode; the L1 must be stopped.

        Requests of at most :attr:`max_read` bytes, up to :data:`WINDOW` in flight.
        """
        if addr < 0 or size < 0:
            raise MemoryReadError(addr, size, "negative address or size")
        step = self.max_read
        if size <= step and self._sock is not None:          # one packet: no bookkeeping
            request = b"m%x,%x" % (addr, size)
            try:
                self._sock.sendall(b"$%s#%02x" % (request, sum(request) & 0xFF))
            except OSError as exc:
                raise RspError(f"lost the gdbstub (send: {exc})") from exc
            return self._memory_reply(addr, size, 0)
        chunks = [(a, min(step, addr + size - a)) for a in range(addr, addr + size, step)]
        out: list[bytes] = []
        sent = 0

        def push(count: int) -> int:
            batch = chunks[sent:sent + count]
            self.send_raw(b"".join(encode_packet(b"m%x,%x" % c) for c in batch))
            return len(batch)
        sent += push(WINDOW)
        for i, (a, n) in enumerate(chunks):
            if sent < len(chunks) and sent - i <= WINDOW // 2:   # keep requests in flight
                sent += push(WINDOW // 2)
            out.append(self._memory_reply(a, n, sent - i - 1))
        return b"".join(out)

    def _memory_reply(self, addr: int, size: int, in_flight: int) -> bytes:
        """The reply to one ``m`` request: exactly *size* bytes, or MemoryReadError after
        the *in_flight* later replies are read (the stream stays in step)."""
        raw = self._next_raw(verify=False)
        if b"}" in raw or b"*" in raw:
            raw = decode_payload(raw)
        if len(raw) != 2 * size:
            self._drain(in_flight)
            raise MemoryReadError(addr, size, f"gdbstub answered {raw[:16]!r}")
        return binascii.a2b_hex(raw)

    def _drain(self, count: int) -> None:
        """Read the replies still in flight after an error."""
        for _ in range(count):
            self.receive()

    def write(self, addr: int, data: bytes) -> None:
        """Write *data* at *addr* in the current mode (``M`` packets)."""
        step = max(1, (self.packet_size - 32) // 2)
        for pos in range(0, len(data), step):
            piece = data[pos:pos + step]
            reply = self.request(b"M%x,%x:" % (addr + pos, len(piece)) + piece.hex().encode())
            if reply != b"OK":
                raise MemoryReadError(addr + pos, len(piece), f"write refused: {reply!r}")

    # -- registers --------------------------------------------------------------------

    def registers(self) -> dict[str, Register]:
        """The target description's registers by name (read once)."""
        if self._regs is None:
            self._regs = {r.name: r for r in parse_target_xml(self._xfer)}
        return self._regs

    def _xfer(self, annex: str) -> str:
        """One annex of ``qXfer:features:read``, all of its parts."""
        text, offset = bytearray(), 0
        while True:
            reply = self.request(b"qXfer:features:read:%s:%x,%x"
                                 % (annex.encode(), offset, self.packet_size - 8))
            if reply[:1] not in (b"m", b"l"):
                raise RspError(f"target description {annex}: {reply[:40]!r}")
            text += reply[1:]
            offset += len(reply) - 1
            if reply[:1] == b"l":
                return text.decode()

    def register(self, name: str, cpu: int | None = None) -> int:
        """Register *name* of CPU *cpu* (0-based; None: the current one), unsigned."""
        reg = self.registers().get(name)
        if reg is None:
            raise RspError(f"register {name} is not in the target description")
        if cpu is not None:            # thread ids in the multiprocess form, pid 1
            self.ok(b"Hgp1.%x" % (cpu + 1))
        try:
            reply = self.request(b"p%x" % reg.number)
        finally:
            if cpu is not None:       # back to the CPU that stopped, as gdb's --thread
                m = re.search(rb"thread:(?:p[0-9a-f]+\.)?([0-9a-f]+);", self.last_stop)
                self.ok(b"Hgp1." + (m.group(1) if m else b"0"))
        if not re.fullmatch(rb"[0-9a-fA-F]+", reply) or len(reply) != reg.bits // 4:
            raise RspError(f"register {name}: the gdbstub answered {reply[:40]!r}")
        return int.from_bytes(bytes.fromhex(reply.decode()), "little")


def _unix_connect(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError:
        sock.close()
        raise
    return sock


POLL = 0.5                  # seconds per wait for a stop reply while waiting for a breakpoint


class RspTarget:
    """:class:`harness.target.Target` over an :class:`RspClient` on QEMU's gdbstub.

    *ram_ranges* and *translate* come from the machine (QMP).  The client's
    memory mode is switched per read (physical for ``read_phys``, virtual for
    ``read_virt``) and only when it changes.
    """

    def __init__(self, client: RspClient, *,
                 ram_ranges: Callable[[], list[tuple[int, int]]],
                 translate: Callable[[int], int]) -> None:
        self.client = client
        self._ram_ranges = ram_ranges
        self._translate = translate

    def halted(self) -> contextlib.AbstractContextManager[None]:
        """All L1 CPUs stopped for the block."""
        return self.client.halted()

    def read_phys(self, addr: int, size: int) -> bytes:
        """Exactly *size* bytes of L1 physical memory."""
        return self._read(True, addr, size)

    def read_virt(self, addr: int, size: int) -> bytes:
        """*size* bytes at L1 virtual *addr* (the current CPU's tables)."""
        return self._read(False, addr, size)

    def _read(self, physical: bool, addr: int, size: int) -> bytes:
        """A read in QEMU's physical or virtual mode, with L1 stopped (halted for it)."""
        c = self.client
        if c.running:
            with c.halted():
                return self._read(physical, addr, size)
        c.set_phys(physical)               # a no-op when the mode is already right
        return c.read(addr, size)

    def write_phys(self, addr: int, data: bytes) -> None:
        """Write L1 physical memory."""
        c = self.client
        with c.halted():
            c.set_phys(True)
            c.write(addr, data)

    def register(self, name: str, cpu: int | None = None) -> int:
        """A register of L1 CPU *cpu* (None: the current one)."""
        with self.client.halted():
            return self.client.register(name, cpu)

    def ram_ranges(self) -> list[tuple[int, int]]:
        """From the machine (QEMU's memory tree)."""
        return self._ram_ranges()

    def translate(self, va: int) -> int:
        """From the machine (QEMU's gva2gpa)."""
        return self._translate(va)

    def nudge(self) -> None:
        """Let the L1 run for 2 ms and stop it again."""
        self.client.cont()
        time.sleep(0.002)
        self.client.interrupt()

    # -- harness.target.Breakpoints and Leavable ---------------------------------------

    def set_breakpoint(self, addr: int) -> None:
        """A breakpoint at kernel virtual *addr* (``Z0``, inserted with L1 stopped)."""
        if addr not in self.client.breakpoints:
            with self.client.halted():
                self.client.insert_breakpoint(addr)

    def clear_breakpoint(self, addr: int) -> None:
        """Remove the breakpoint at *addr*, if set."""
        if addr in self.client.breakpoints:
            with self.client.halted():
                self.client.remove_breakpoint(addr)

    def wait_stop(self, timeout: float) -> int:
        """Let L1 run until a breakpoint stops it; its PC (L1 stays stopped).
        :class:`~harness.target.BreakpointTimeout` after *timeout* (L1 still runs)."""
        from harness.target import BreakpointTimeout
        c = self.client
        c.cont()
        deadline = time.monotonic() + timeout
        while True:
            try:
                c.wait_stop(min(POLL, max(0.001, deadline - time.monotonic())))
                break
            except RspError as exc:
                if not isinstance(exc.__cause__, TimeoutError):
                    raise
            if time.monotonic() >= deadline:
                raise BreakpointTimeout(f"L1 did not stop at a breakpoint within {timeout:g} s")
        return c.register(self._pc())

    def _pc(self) -> str:
        """The program counter's name in the target description (x86-64: ``rip``)."""
        return "pc" if "pc" in self.client.registers() else "rip"

    def resume(self) -> None:
        """Let L1 run."""
        self.client.cont()

    def leave_stopped(self) -> None:
        """End the session with L1 stopped (see :meth:`RspClient.leave_stopped`)."""
        self.client.leave_stopped()
