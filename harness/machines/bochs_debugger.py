"""Bochs's internal debugger as a :class:`~harness.target.Target`.

Debian's Bochs 2.7 is built with its internal debugger (no gdb stub; Bochs
builds one or the other).  The debugger reads commands on Bochs's own terminal,
so the machine runs Bochs on a pty under pexpect and :class:`BochsDebugger`
types the commands: Ctrl-C stops the simulation and gives a ``<bochs:N>``
prompt, ``c`` lets it run again.  Commands used (Bochs 2.7 ``help``):

* ``xp /Nwx PA``: N 32-bit words of physical memory, as text (``/gx`` prints
  only the low halves in 2.7: never use it);
* ``writemem "FILE" LADDR LEN``: LEN bytes of *linear* memory (the current
  CPU's paging) into a file: 1 MiB in milliseconds, the fast path;
* ``setpmem PA 4 VAL``: write 4 bytes of physical memory;
* ``page LADDR``: Bochs's own translation of a linear address;
* ``r``, ``sreg``, ``creg``: registers; ``show "cpu0.VMX..."``: the VMX state
  (current VMCS pointer and its cached EPTP).

The text parsers are pure functions, tested on recorded transcripts.

>>> parse_xp("0x0000000000001000 <bogus+       0>:\\t0x3094e907\\t0x00000000\\n", 0x1000, 8)
b'\\x07\\xe9\\x940\\x00\\x00\\x00\\x00'
>>> hex(parse_registers("rax: 00000000_00000020\\nrip: ffffffff_b2bef208\\n")["rip"])
'0xffffffffb2bef208'
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pexpect

from harness.errors import InfraError, MemoryReadError
from harness.mem import PAGE_SIZE

__all__ = ["BochsDebugger", "BochsTarget", "DebuggerError", "parse_xp", "parse_registers",
           "parse_sreg", "parse_creg", "parse_show", "parse_page", "VMX_REGISTERS",
           "clean_output"]

PROMPT = re.compile(r"<bochs:\d+> ")
BREAK_RETRY = 5.0               # seconds before Ctrl-C is typed again
LINE_TAKEN = re.compile(r"\n")   # readline ends an accepted line with a newline
ESCAPES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
XP_LINE = re.compile(r"^0x([0-9a-f]+) <[^>]*>:((?:\s+0x[0-9a-f]{8})+)\s*$", re.M)
REG_LINE = re.compile(r"^([a-z0-9]+)\s*: ([0-9a-f]{8})_([0-9a-f]{8})\s*$", re.M)
EFLAGS_LINE = re.compile(r"^eflags 0x([0-9a-f]+):", re.M)
SREG_LINE = re.compile(r"^(es|cs|ss|ds|fs|gs|ldtr|tr):0x([0-9a-f]+),", re.M)
CREG_LINE = re.compile(r"^(CR0|CR3|CR4|EFER|XCR0)=0x([0-9a-f]+)", re.M)
CREG_CR2 = re.compile(r"^CR2=page fault laddr=0x([0-9a-f]+)", re.M)
CREG_CR8 = re.compile(r"^CR8: 0x([0-9a-f]+)", re.M)
SHOW_LINE = re.compile(r"^\s*(\w+) = (0x[0-9a-f]+|\d+|true|false)\s*$", re.M)
PAGE_LINE = re.compile(r"linear page 0x([0-9a-f]+) maps to physical page 0x([0-9a-f]+)")
ERROR_WORDS = ("Error", "error", "not available", "could not", "can't find")

# register name -> the param of `show "cpu<N>.VMX.<path>"` that holds it
VMX_REGISTERS = {
    "vmcsptr": "VMX.vmcsptr",                       # physical address of the current VMCS
    "vmxonptr": "VMX.vmxonptr",
    "in_vmx": "VMX.in_vmx",                         # 1 after VMXON
    "in_vmx_guest": "VMX.in_vmx_guest",             # 1 while a CPU runs a guest (L2)
    "eptp": "VMX.VMCS_CACHE.VMEXEC_CTRLS.eptptr",  # the current VMCS's EPT pointer
    "vpid": "VMX.VMCS_CACHE.VMEXEC_CTRLS.vpid",
}
XP_CHUNK = PAGE_SIZE            # bytes per xp command
WRITEMEM_MAX = 1 << 24          # bytes per writemem command


class DebuggerError(InfraError):
    """A debugger command failed or Bochs stopped answering; carries the command."""


def clean_output(raw: str, cmd: str) -> str:
    """A command's output without terminal escapes, carriage returns and its own echo."""
    text = ESCAPES.sub("", raw).replace("\r", "")
    lines = text.split("\n")
    if lines and lines[0].strip() == cmd.strip():
        lines = lines[1:]
    return "\n".join(lines)


def parse_xp(text: str, addr: int, size: int) -> bytes:
    """The *size* bytes at *addr* from ``xp /Nwx`` output (addr and size multiples of 4)."""
    out = bytearray()
    for m in XP_LINE.finditer(text):
        if int(m.group(1), 16) != addr + len(out):
            raise MemoryReadError(addr, size, f"xp line at {m.group(1)} out of order")
        for word in m.group(2).split():
            out += int(word, 16).to_bytes(4, "little")
    if len(out) != size:
        raise MemoryReadError(addr, size, f"xp gave {len(out)} bytes: {text[-200:]!r}")
    return bytes(out)


def parse_registers(text: str) -> dict[str, int]:
    """General registers and rflags from ``r`` output (``rax: 00000000_00000020``)."""
    regs = {m.group(1): int(m.group(2) + m.group(3), 16) for m in REG_LINE.finditer(text)}
    m = EFLAGS_LINE.search(text)
    if m:
        regs["rflags"] = regs["eflags"] = int(m.group(1), 16)
    return regs


def parse_sreg(text: str) -> dict[str, int]:
    """Segment selectors from ``sreg`` output (``cs:0x0010, dh=...``)."""
    return {m.group(1): int(m.group(2), 16) for m in SREG_LINE.finditer(text)}


def parse_creg(text: str) -> dict[str, int]:
    """Control registers, EFER and XCR0 from ``creg`` output."""
    regs = {m.group(1).lower(): int(m.group(2), 16) for m in CREG_LINE.finditer(text)}
    for pat, name in ((CREG_CR2, "cr2"), (CREG_CR8, "cr8")):
        m = pat.search(text)
        if m:
            regs[name] = int(m.group(1), 16)
    return regs


def parse_show(text: str) -> dict[str, int]:
    """``name = value`` lines of ``show "param"`` output (booleans as 0/1)."""
    out = {}
    for m in SHOW_LINE.finditer(text):
        v = m.group(2)
        out[m.group(1)] = 1 if v == "true" else 0 if v == "false" else int(v, 0)
    return out


def parse_page(text: str, va: int) -> int:
    """The physical address of *va* from ``page`` output."""
    m = PAGE_LINE.search(text)
    if m is None:
        raise MemoryReadError(va, 1, f"Bochs cannot translate it: {text.strip()[-200:]!r}")
    return int(m.group(2), 16) + (va & (PAGE_SIZE - 1))


class BochsDebugger:
    """Commands to Bochs's debugger on the pty of a pexpect child running Bochs."""

    def __init__(self, child: pexpect.spawn, timeout: float = 60.0) -> None:
        self.child = child
        self.timeout = timeout
        self.running = False        # simulation running (no prompt to type at)

    def wait_prompt(self, timeout: float | None = None) -> str:
        """Everything printed up to the next prompt."""
        wait = self.timeout if timeout is None else timeout
        try:
            self.child.expect(PROMPT, timeout=wait)
        except pexpect.TIMEOUT:
            raise DebuggerError(f"Bochs's debugger gave no prompt within {wait:g} s; "
                                f"last output: {str(self.child.before)[-300:]!r}") from None
        except pexpect.EOF:
            raise DebuggerError("Bochs exited (debugger closed); last output: "
                                f"{str(self.child.before)[-300:]!r}") from None
        return str(self.child.before)

    def command(self, cmd: str, timeout: float | None = None) -> str:
        """Run one debugger command with the simulation stopped; its cleaned output."""
        if self.running:
            raise DebuggerError(f"debugger command {cmd!r} while the simulation runs")
        self.child.sendline(cmd)
        return clean_output(self.wait_prompt(timeout), cmd)

    def checked(self, cmd: str, timeout: float | None = None) -> str:
        """:meth:`command`, raising if the output reports an error."""
        out = self.command(cmd, timeout)
        if any(w in out for w in ERROR_WORDS):
            raise DebuggerError(f"Bochs debugger: {cmd!r}: {out.strip()[-300:]}")
        return out

    def stop(self, timeout: float | None = None) -> None:
        """Break into the debugger (Ctrl-C on its terminal) and wait for the prompt.

        Bochs clears its break request when ``c`` starts running, so a Ctrl-C that
        arrives in between is lost: Ctrl-C is repeated every :data:`BREAK_RETRY` seconds
        (one that reaches the prompt only makes readline print ``^C``).
        """
        if not self.running:
            return
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            self.child.sendcontrol("c")
            left = deadline - time.monotonic()
            try:
                self.wait_prompt(max(0.1, min(BREAK_RETRY, left)))
                break
            except DebuggerError:
                if time.monotonic() >= deadline or not self.child.isalive():
                    raise
        self.running = False

    def cont(self) -> None:
        """Let the simulation run (``c``: no prompt until the next stop).

        Waits until readline took the line (it prints a newline: the terminal's own echo
        is off, so readline does not echo the characters): a Ctrl-C typed before the
        debugger read ``c`` would flush it from the terminal (ISIG), and no prompt would
        ever come.
        """
        if not self.running:
            self.child.sendline("c")
            try:
                self.child.expect(LINE_TAKEN, timeout=self.timeout)
            except (pexpect.TIMEOUT, pexpect.EOF):
                raise DebuggerError("Bochs's debugger did not take the `c` command; last "
                                    f"output: {str(self.child.before)[-300:]!r}") from None
            self.running = True


class BochsTarget:
    """:class:`~harness.target.Target` over :class:`BochsDebugger`.

    Every operation stops the simulation for its duration unless it is
    already stopped (:meth:`halted`).  *workdir* (private) receives
    ``writemem`` files; *ram* are the machine's RAM ranges; *direct_map*
    finds, once, the linear address at which the L1 kernel maps physical 0
    (None: bulk physical reads use ``xp``).
    """

    def __init__(self, debugger: BochsDebugger, *, workdir: Path,
                 ram: list[tuple[int, int]], cpus: int = 1,
                 direct_map: Callable[[BochsTarget], int | None] | None = None) -> None:
        self.dbg = debugger
        self.workdir = workdir
        self.ram = list(ram)
        self.cpus = cpus
        self._find_direct_map = direct_map
        self._direct_map: int | None = None
        self._looked_for_direct_map = False
        self._dumps = 0

    # -- run control --------------------------------------------------------------

    @contextlib.contextmanager
    def halted(self) -> Iterator[None]:
        """Stopped for the block; resumed after unless it was stopped before."""
        was_running = self.dbg.running
        self.dbg.stop()
        try:
            yield
        finally:
            if was_running:
                self.dbg.cont()

    def nudge(self) -> None:
        """Let L1 run for 2 ms and stop it again (inside :meth:`halted`)."""
        self.dbg.cont()
        time.sleep(0.002)
        self.dbg.stop()

    # -- memory ---------------------------------------------------------------------

    def read_phys(self, addr: int, size: int) -> bytes:
        """Exactly *size* bytes of physical memory: ``xp`` page by page, or
        ``writemem`` through the kernel's direct map for large reads."""
        if size <= 0:
            return b""
        with self.halted():
            if size > 4 * XP_CHUNK:
                base = self.direct_map()
                if base is not None:
                    return self._read_direct(base, addr, size)
            lo, hi = addr & ~3, (addr + size + 3) & ~3
            out = bytearray()
            for pos in range(lo, hi, XP_CHUNK):
                n = min(XP_CHUNK, hi - pos)
                out += parse_xp(self.dbg.command(f"xp /{n // 4}wx {pos:#x}"), pos, n)
            return bytes(out[addr - lo:addr - lo + size])

    def _read_direct(self, base: int, addr: int, size: int) -> bytes:
        """Physical memory through the direct map, its two ends checked with ``page``."""
        for pa in (addr, addr + size - 1):
            if self.translate(base + pa) != pa:
                raise MemoryReadError(addr, size, f"the direct map at {base:#x} does not "
                                      f"map {pa:#x}")
        return self.read_virt(base + addr, size)

    def read_virt(self, addr: int, size: int) -> bytes:
        """*size* bytes at linear *addr* (the halted CPU's paging), via ``writemem``."""
        out = bytearray()
        with self.halted():
            while len(out) < size:
                n = min(WRITEMEM_MAX, size - len(out))
                out += self._writemem(addr + len(out), n)
        return bytes(out)

    def _writemem(self, addr: int, size: int) -> bytes:
        self._dumps += 1
        path = self.workdir / f"writemem-{self._dumps % 2}.bin"
        path.unlink(missing_ok=True)
        out = self.dbg.command(f'writemem "{path}" {addr:#x} {size}')
        data = path.read_bytes() if path.exists() else b""
        path.unlink(missing_ok=True)
        if len(data) != size or any(w in out for w in ERROR_WORDS):
            raise MemoryReadError(addr, size, f"linear read failed: {out.strip()[-200:]!r}")
        return data

    def write_phys(self, addr: int, data: bytes) -> None:
        """``setpmem`` 4 bytes at a time (1 byte at a time for unaligned ends)."""
        with self.halted():
            pos = 0
            while pos < len(data):
                width = 4 if (addr + pos) % 4 == 0 and len(data) - pos >= 4 else 1
                val = int.from_bytes(data[pos:pos + width], "little")
                self.dbg.checked(f"setpmem {addr + pos:#x} {width} {val:#x}")
                pos += width

    def translate(self, va: int) -> int:
        """Bochs's translation of linear *va* by the halted CPU's paging."""
        with self.halted():
            return parse_page(self.dbg.command(f"page {va:#x}"), va)

    def direct_map(self) -> int | None:
        """The linear address mapping physical 0 (found once), or None."""
        if not self._looked_for_direct_map:
            self._looked_for_direct_map = True
            if self._find_direct_map is not None:
                self._direct_map = self._find_direct_map(self)
        return self._direct_map

    def ram_ranges(self) -> list[tuple[int, int]]:
        """The machine's RAM (from its configuration)."""
        return list(self.ram)

    # -- registers --------------------------------------------------------------------

    def register(self, name: str, cpu: int | None = None) -> int:
        """A register of the current CPU: general, segment selector, control, or VMX
        (:data:`VMX_REGISTERS`: ``vmcsptr``, ``eptp``, ``in_vmx_guest``...)."""
        key = name.lower()
        if cpu not in (None, 0):
            if key not in VMX_REGISTERS:
                raise InfraError(f"register {name} of CPU {cpu}: Bochs's debugger shows "
                                 "general registers of the current CPU only")
            if not 0 <= cpu < self.cpus:
                raise InfraError(f"no CPU {cpu} (the machine has {self.cpus})")
        with self.halted():
            if key in VMX_REGISTERS:
                path = f"cpu{cpu or 0}.{VMX_REGISTERS[key]}"
                values = parse_show(self.dbg.checked(f'show "{path}"'))
                leaf = path.rsplit(".", 1)[1]
                if leaf in values:
                    return values[leaf]
                raise InfraError(f"Bochs shows no {path}")
            for cmd, (names, parse) in _REGISTER_COMMANDS.items():
                if key in names:
                    regs = parse(self.dbg.command(cmd))
                    if key in regs:
                        return regs[key]
        raise InfraError(f"register {name} is not available from Bochs's debugger")


_REGISTER_COMMANDS: dict[str, tuple[frozenset[str], Callable[[str], dict[str, int]]]] = {
    "r": (frozenset({"rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp", "r8", "r9",
                     "r10", "r11", "r12", "r13", "r14", "r15", "rip", "rflags", "eflags"}),
          parse_registers),
    "sreg": (frozenset({"es", "cs", "ss", "ds", "fs", "gs", "ldtr", "tr"}), parse_sreg),
    "creg": (frozenset({"cr0", "cr2", "cr3", "cr4", "cr8", "efer", "xcr0"}), parse_creg),
}
