"""The L1 guest's serial console: marker-framed shell commands and panic detection.

:class:`Console` runs pexpect over the console's unix socket (never QEMU's
stdio).  Every byte that arrives is written to ``console.log`` and flushed at
once, so the log survives a crash of the harness.

Commands are framed the labgrid way: the shell prints a begin marker, runs
the command, then prints an end marker followed by ``$?``.  The markers are
built by ``printf '%s%s'`` from two pieces, so they never appear literally in
the echoed command line.  The output is what lies between the two markers,
with ``\\r\\n`` turned into ``\\n`` and kernel log lines (``[   1.234] ...``)
removed (they stay in ``console.log``).

While waiting for anything, the guest OS's panic patterns are watched; the
first one seen raises :class:`GuestPanic` (a :class:`FindingsError`) with an
excerpt of up to 50 lines or 2 seconds of what followed.

A command that exits non-zero raises :class:`GuestCommandError`, an
:class:`InfraError`: the harness's own commands must work (a scenario's ``shell``
step checks the status itself).  Losing the console is a :class:`ConsoleError`;
waiting too long a :class:`ConsoleTimeout` (verdict ``timeout``).

The console is reached through a :data:`ConsoleEndpoint`: a unix socket (QEMU),
a loopback TCP port, a pty the emulator opened, or the master of a pty the
machine opened for the emulator (Bochs).

>>> with Console.connect(UnixEndpoint(sock), log_path=out / "console.log",
...                      profile=GUEST_OSES["linux"].console) as con:
...     con.wait_for_shell(60)                              # doctest: +SKIP
...     con.run("uname -r").output
'6.1.0-28-amd64\\n'
"""

from __future__ import annotations

import collections
import os
import re
import secrets
import socket
import time
import tty
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO

import pexpect
import pexpect.fdpexpect

from harness.errors import FindingsError, HarnessTimeout, InfraError

__all__ = [
    "ConsoleProfile",
    "ConsoleEndpoint",
    "UnixEndpoint",
    "TcpEndpoint",
    "PtyEndpoint",
    "FdEndpoint",
    "open_endpoint",
    "LINE_START",
    "CmdResult",
    "Console",
    "ConsoleError",
    "ConsoleTimeout",
    "GuestPanic",
    "GuestCommandError",
]

EXCERPT_LINES = 50      # a panic excerpt stops after this many lines ...
EXCERPT_SECONDS = 2.0   # ... or after this long
TAIL_CHARS = 16384      # how much recent console text errors may quote
READ_SIZE = 16384       # bytes per read from the socket
# pexpect searches only this much of the unmatched text: the fresh read plus a
# margin for a pattern split across reads (all patterns are short).  Searching
# all of it made a 1 MB command output take a minute.
SEARCH_WINDOW = READ_SIZE + 1024


@dataclass(frozen=True)
class ConsoleProfile:
    """What the console needs to know about one L1 operating system.

    Held by its :class:`harness.guests.GuestOS` record.
    """

    prompt: str                     # regex of the interactive shell prompt
    panic: tuple[str, ...]          # regexes that mean the kernel died or oopsed
    warning: tuple[str, ...] = ()   # regexes that are panics unless warnings are ignored
    kernel_line: str | None = None  # regex of a kernel log line (removed from outputs)
    name: str = ""                  # the OS, for messages
    reports: tuple[str, ...] = ()   # regexes that start a kernel report (sanitizers, lock
    #                                 checkers); with panic and warning: kernel_report findings
    # on a panic: drive the kernel debugger (ddb) and return its transcript, saved as
    # debugger.txt beside console.log (None: the excerpt is all there is)
    debugger: Callable[[Console], str] | None = None


# Anchor at a line start or after a printk timestamp, so that a command line
# echoed by the shell ("grep 'BUG: ' ...") does not count.
LINE_START = r"(?:^|\] )"


class ConsoleError(InfraError):
    """The console failed (closed, QEMU gone); carries the last console lines."""

    def __init__(self, message: str, tail: str = "") -> None:
        self.tail = tail
        super().__init__(f"{message}\nlast console lines:\n{tail}" if tail else message)


class ConsoleTimeout(HarnessTimeout, ConsoleError):
    """A per-call timeout expired before the expected text appeared (verdict ``timeout``)."""


class GuestPanic(FindingsError):
    """The L1 kernel panicked, oopsed or hit BUG/WARNING; carries the excerpt."""

    verdict = "panic"

    def __init__(self, os_name: str, pattern: str, excerpt: str) -> None:
        self.os_name = os_name
        self.pattern = pattern
        self.excerpt = excerpt
        super().__init__(f"{os_name} guest panic ({pattern!r}):\n{excerpt}")


class GuestCommandError(InfraError):
    """A harness-driven guest command exited non-zero: carries the command, status and tail.

    An infrastructure error: the harness's own commands (mkfifo, cat of a report) must
    work.  A scenario's ``shell`` step checks the status itself (``StepFailed``).
    """

    def __init__(self, cmd: str, status: int, output: str) -> None:
        self.cmd = cmd
        self.status = status
        self.output = output
        tail = "\n".join(output.splitlines()[-20:])
        super().__init__(f"guest command {cmd!r} exited with status {status}\n{tail}")


@dataclass(frozen=True)
class CmdResult:
    """One framed command: its text, output (``\\n`` line ends) and exit status."""

    cmd: str
    output: str
    status: int
    lines: list[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "lines", self.output.splitlines())


class _Log:
    """pexpect's logfile: writes through to console.log and keeps a tail."""

    def __init__(self, sink: IO[str]) -> None:
        self.sink = sink
        self.recent: collections.deque[str] = collections.deque()
        self.size = 0

    def write(self, s: str) -> None:
        """Log and flush at once, so the log survives a crash; a full disk is an error."""
        try:
            self.sink.write(s)
            self.sink.flush()
        except OSError as e:
            raise ConsoleError(f"cannot write the console log: {e.strerror or e}") from None
        self.recent.append(s)
        self.size += len(s)
        while self.size > TAIL_CHARS and len(self.recent) > 1:
            self.size -= len(self.recent.popleft())

    def flush(self) -> None:
        """Already flushed on every write."""

    def tail(self, lines: int = 20) -> str:
        """The last *lines* console lines, without carriage returns."""
        text = "".join(self.recent).replace("\r", "")
        return "\n".join(text.splitlines()[-lines:])


def _new_tag() -> str:
    """A fresh marker tag: random, so that old output never matches."""
    return secrets.token_hex(4)


@dataclass(frozen=True)
class UnixEndpoint:
    """A console on a unix stream socket (QEMU's ``-chardev socket``)."""

    path: Path


@dataclass(frozen=True)
class TcpEndpoint:
    """A console on a loopback TCP port (never another host)."""

    port: int
    host: str = "127.0.0.1"


@dataclass(frozen=True)
class PtyEndpoint:
    """A console on a pseudo-terminal the emulator opened (its slave side, put in raw mode)."""

    path: Path


@dataclass(frozen=True)
class FdEndpoint:
    """A console stream the machine holds open: the master side of a pty whose slave
    the emulator opened by name (Bochs's ``com1: mode=term``).  A console works on a
    duplicate of *fd*; the machine closes the original when it shuts down."""

    fd: int


ConsoleEndpoint = UnixEndpoint | TcpEndpoint | PtyEndpoint | FdEndpoint
LOOPBACK = ("127.0.0.1", "::1", "localhost")


def open_endpoint(ep: ConsoleEndpoint) -> int:
    """A connected file descriptor for *ep*; OSError if it is not there (yet)."""
    if isinstance(ep, PtyEndpoint):
        fd = os.open(ep.path, os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
        tty.setraw(fd)          # bytes as they come: no line editing, no echo
        return fd
    if isinstance(ep, FdEndpoint):
        return os.dup(ep.fd)
    if isinstance(ep, TcpEndpoint):
        if ep.host not in LOOPBACK:
            raise ConsoleError(f"console endpoint {ep.host}:{ep.port} is not on loopback")
        sock = socket.create_connection((ep.host, ep.port), timeout=5.0)
    else:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(str(ep.path))
        except OSError:
            sock.close()
            raise
    sock.settimeout(None)
    return sock.detach()


class Console:
    """Shell access to one guest over a connected console file descriptor.

    *fd* is a connected stream (socket, pty, or a socketpair end in tests); the
    console takes ownership.  *profile* is the guest OS's
    :class:`ConsoleProfile`; *ignore_warnings* leaves ``WARNING:`` lines alone.
    """

    def __init__(self, fd: int, *, log_path: Path | str, profile: ConsoleProfile,
                 ignore_warnings: bool = False, timeout: float = 60.0,
                 new_tag: Callable[[], str] = _new_tag) -> None:
        self.guest = profile
        self.timeout = timeout
        self.new_tag = new_tag
        self.log_path = Path(log_path)
        self._logfile = open(log_path, "a", encoding="utf-8", newline="")
        self.log = _Log(self._logfile)
        patterns = self.guest.panic + (() if ignore_warnings else self.guest.warning)
        # one alternation: one scan per read instead of one per pattern
        self._panic_re = re.compile("|".join(f"(?:{p})" for p in patterns), re.MULTILINE)
        self._child = pexpect.fdpexpect.fdspawn(
            fd, timeout=timeout, encoding="utf-8", codec_errors="replace",
            maxread=READ_SIZE, searchwindowsize=SEARCH_WINDOW)
        self._child.logfile_read = self.log

    @classmethod
    def connect(cls, endpoint: ConsoleEndpoint, *, log_path: Path | str,
                profile: ConsoleProfile, retry_for: float = 5.0,
                ignore_warnings: bool = False, timeout: float = 60.0) -> Console:
        """Connect to *endpoint*, retrying while it appears."""
        deadline = time.monotonic() + retry_for
        while True:
            try:
                fd = open_endpoint(endpoint)
            except OSError as exc:
                if time.monotonic() > deadline:
                    raise ConsoleError(f"cannot connect to console {endpoint}: {exc}") from exc
                time.sleep(0.05)
                continue
            return cls(fd, log_path=log_path, profile=profile,
                       ignore_warnings=ignore_warnings, timeout=timeout)

    def close(self) -> None:
        """Close the socket and the log file.  Idempotent."""
        if self._child is not None and not self._child.closed:
            self._child.close()
        if not self._logfile.closed:
            self._logfile.close()

    def __enter__(self) -> Console:
        return self

    def __exit__(self, exc_type: type[BaseException] | None,
                 exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    # -- low level ------------------------------------------------------------

    def send_line(self, s: str) -> None:
        """Type one line (a trailing newline is added)."""
        try:
            self._child.send(s + "\n")
        except OSError as exc:
            raise ConsoleError(f"console write failed: {exc}", self.log.tail()) from exc

    def expect(self, pattern: str | re.Pattern[str] | Sequence[str | re.Pattern[str]],
               timeout: float | None = None) -> re.Match[str]:
        """Wait for *pattern* (a regex, or a list: any of them); return the match.

        Raises :class:`GuestPanic` if a panic pattern shows up first,
        :class:`ConsoleTimeout` after *timeout* seconds, :class:`ConsoleError`
        if the console closes.
        """
        wanted: list[str | re.Pattern[str]] = \
            [pattern] if isinstance(pattern, str | re.Pattern) else list(pattern)
        compiled = [p if isinstance(p, re.Pattern) else re.compile(p) for p in wanted]
        index = self._expect_raw([*compiled, self._panic_re], timeout)
        if index == len(compiled):
            self._raise_panic(str(self._child.after).strip())
        match = self._child.match
        assert isinstance(match, re.Match)
        return match

    def _expect_raw(self, patterns: list[re.Pattern[str]], timeout: float | None) -> int:
        """pexpect.expect_list with EOF and TIMEOUT turned into exceptions."""
        wait = self.timeout if timeout is None else timeout
        try:
            return int(self._child.expect_list(patterns, timeout=wait))
        except pexpect.TIMEOUT:
            raise ConsoleTimeout(
                f"console: no {[p.pattern for p in patterns[:1]]} within {wait:g} s",
                self.log.tail()) from None
        except pexpect.EOF:
            raise ConsoleError("console closed (QEMU exited?)", self.log.tail()) from None

    def _raise_panic(self, pattern: str) -> None:
        """Collect up to 50 lines or 2 s after the panic line, then raise.

        *pattern* is the text that matched a panic pattern.
        """
        before = str(self._child.before).rsplit("\n", 1)[-1]
        excerpt = before + str(self._child.after) + str(self._child.buffer)
        self._child.buffer = ""
        deadline = time.monotonic() + EXCERPT_SECONDS
        while excerpt.count("\n") < EXCERPT_LINES:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                excerpt += self._child.read_nonblocking(4096, timeout=min(left, 0.2))
            except pexpect.TIMEOUT:
                continue
            except (pexpect.EOF, OSError):
                break
        lines = excerpt.replace("\r", "").splitlines()[:EXCERPT_LINES]
        text = "\n".join(lines)
        if self.guest.debugger is not None:
            text += self._debugger_transcript(self.guest.debugger)
        raise GuestPanic(self.guest.name or "guest", pattern, text)

    def _debugger_transcript(self, debugger: Callable[[Console], str]) -> str:
        """Run the profile's debugger collection; save it; a note for the excerpt."""
        # forget the text the excerpt took: pexpect searches its unconsumed `_before`
        # again on the next expect, and a prompt in it would shift every answer by one
        self._child.buffer = ""
        self._child._before = self._child.buffer_type()
        try:
            transcript = debugger(self)
        except (ConsoleError, OSError) as exc:
            transcript = f"[debugger collection failed: {exc}]\n"
        path = self.log_path.with_name("debugger.txt")
        try:
            path.write_text(transcript)
        except OSError:
            return f"\n--- kernel debugger ---\n{transcript}"
        return f"\n--- kernel debugger: {len(transcript.splitlines())} lines in {path.name}"

    def expect_quiet(self, pattern: re.Pattern[str], timeout: float) -> str:
        """Wait for *pattern* without watching for panics (the kernel debugger's prompt
        is one); the text before it.  ConsoleTimeout / ConsoleError as :meth:`expect`."""
        self._expect_raw([pattern], timeout)
        return str(self._child.before)

    # -- shell ------------------------------------------------------------------

    def wait_for_shell(self, timeout: float | None = None, interval: float = 2.0) -> None:
        """Wait until a shell answers: type a probe every *interval* seconds.

        Works whatever the prompt looks like; old probes that the shell runs
        late print a marker that later commands ignore.
        """
        wait = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + wait
        tag = self.new_tag()
        while True:
            self.send_line(f"printf '%s%s\\n' @@R {tag}@@")
            left = deadline - time.monotonic()
            try:
                self.expect(f"@@R{tag}@@", timeout=max(0.1, min(interval, left)))
                return
            except ConsoleTimeout:
                if time.monotonic() >= deadline:
                    raise ConsoleTimeout(f"no shell on the console within {wait:g} s",
                                         self.log.tail()) from None

    def framed(self, cmd: str, tag: str) -> str:
        """The line that runs *cmd* between begin and end markers carrying *tag*."""
        if "\n" in cmd:
            raise ValueError("a framed command is one line; use send_line for scripts")
        sep = " " if cmd.rstrip().endswith("&") else "; "
        return (f"printf '%s%s\\n' @@B {tag}@@; {cmd}{sep}"
                f"printf '\\n%s%s %d\\n' @@E {tag}@@ $?")

    def run(self, cmd: str, timeout: float | None = None, check: bool = True) -> CmdResult:
        """Run one shell command line; return its output and exit status.

        With *check*, a non-zero status raises :class:`GuestCommandError`.
        The command gets the console as standard input: for interactive
        programs use :meth:`send_line` and :meth:`expect`.
        """
        tag = self.new_tag()
        self.send_line(self.framed(cmd, tag))
        self.expect(f"@@B{tag}@@\r*\n", timeout)
        self.expect(f"\r*\n@@E{tag}@@ (-?\\d+)\r*\n", timeout)
        status = int(self._child.match.group(1))
        result = CmdResult(cmd, self._clean(str(self._child.before)), status)
        if check and status != 0:
            raise GuestCommandError(cmd, status, result.output)
        return result

    def _clean(self, raw: str) -> str:
        """``\\r\\n`` to ``\\n``; kernel log lines removed."""
        text = re.sub(r"\r+\n", "\n", raw).replace("\r", "")
        if self.guest.kernel_line is None:
            return text
        kline = re.compile(self.guest.kernel_line)
        return "".join(ln for ln in text.splitlines(keepends=True) if not kline.match(ln))
