"""Console framing and panic detection, replayed from recorded transcripts (no VM)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.console import (
    Console,
    ConsoleError,
    ConsoleTimeout,
    GuestCommandError,
    GuestPanic,
)
from harness.errors import FindingsError, InfraError, RegistryLookupError
from harness.guests import GUEST_OSES

DATA = Path(__file__).parent.parent / "data" / "console"


class Guest:
    """The far end of a socket pair: plays a transcript, records what was typed."""

    def __init__(self, peer: socket.socket) -> None:
        self.peer = peer

    def play(self, text: str | bytes, close: bool = True) -> None:
        """Send *text* (str: ``\\n`` becomes ``\\r\\n``); then close unless told not to."""
        data = text if isinstance(text, bytes) else text.replace("\n", "\r\n").encode()
        self.peer.sendall(data)
        if close:
            self.peer.shutdown(socket.SHUT_WR)

    def typed(self) -> str:
        """Everything the console sent so far."""
        self.peer.setblocking(False)
        out = b""
        try:
            while chunk := self.peer.recv(65536):
                out += chunk
        except BlockingIOError:
            pass
        return out.decode()


def tags(*names: str) -> Iterator[str]:
    """A fixed tag sequence, as recorded in the transcripts."""
    return iter(names)


@pytest.fixture
def console_pair(tmp_path: Path) -> Iterator[tuple[socket.socket, Guest, Path]]:
    a, b = socket.socketpair()
    yield a, Guest(b), tmp_path / "console.log"
    b.close()


def console(pair: tuple[socket.socket, Guest, Path], *names: str,
            os_name: str = "linux") -> tuple[Console, Guest, Path]:
    """A Console over the pair, with a fixed tag sequence."""
    sock, guest, log = pair
    it = tags(*names)
    con = Console(sock.detach(), log_path=log, new_tag=lambda: next(it), timeout=5.0,
                  profile=GUEST_OSES[os_name].console)
    return con, guest, log


def test_recorded_session_commands_and_statuses(console_pair) -> None:
    con, guest, log = console(console_pair, "a1b2c3d4", *[f"{i:08x}" for i in range(1, 8)])
    transcript = (DATA / "linux-session.log").read_bytes()
    guest.play(transcript)
    with con:
        con.wait_for_shell(5)
        uname = con.run("uname -a")
        assert uname.status == 0
        assert uname.output == ("Linux (none) 6.1.0-54-cloud-amd64 #1 SMP PREEMPT_DYNAMIC "
                                "Debian 6.1.190-1 (2026-10-16) x86_64 GNU/Linux\n")
        assert con.run("cat /proc/version").output.startswith("Linux version 6.1.0-54")
        assert con.run("printf 'x\\ny'").output == "x\ny"       # no trailing newline kept
        assert con.run("false", check=False).status == 1
        with pytest.raises(GuestCommandError) as err:
            con.run("ls /nonexistent")
        assert err.value.status == 1
        assert "No such file or directory" in err.value.output
        assert isinstance(err.value, InfraError)      # the harness's own commands must work
        assert con.run("echo hi; echo there >&2").lines == ["hi", "there"]
        with pytest.raises(GuestPanic) as panic:
            con.run("echo c > /proc/sysrq-trigger")
    excerpt = panic.value.excerpt
    assert isinstance(panic.value, FindingsError)
    assert "Kernel panic - not syncing: sysrq triggered crash" in excerpt.splitlines()[0]
    assert "sysrq_handle_crash" in excerpt
    assert len(excerpt.splitlines()) <= 50
    # every byte read was logged, \r\n line ends included
    assert log.read_bytes() == transcript[:len(log.read_bytes())]
    assert len(log.read_bytes()) > transcript.index(b"Kernel Offset")


def test_typed_lines_never_contain_the_markers(console_pair) -> None:
    con, guest, _ = console(console_pair, "a1b2c3d4", "00000001")
    guest.play((DATA / "linux-session.log").read_bytes())
    con.wait_for_shell(5)
    con.run("uname -a")
    typed = guest.typed()
    assert "printf" in typed and "uname -a" in typed
    for marker in ("@@Ra1b2c3d4@@", "@@B00000001@@", "@@E00000001@@"):
        assert marker not in typed
    con.close()


def test_panic_while_waiting_for_the_shell(console_pair) -> None:
    con, guest, _ = console(console_pair, "feedf00d")
    guest.play((DATA / "linux-boot-panic.log").read_bytes())
    with pytest.raises(GuestPanic) as panic:
        con.wait_for_shell(5)
    assert "VFS: Unable to mount root fs" in panic.value.excerpt
    assert "mount_block_root" in panic.value.excerpt
    con.close()


def test_oops_inside_a_command(console_pair) -> None:
    con, guest, _ = console(console_pair, "0000000a")
    guest.play((DATA / "linux-oops-synthetic.log").read_bytes())
    with pytest.raises(GuestPanic) as panic:
        con.run("cat /proc/slat-crash")
    lines = panic.value.excerpt.splitlines()
    assert "BUG: kernel NULL pointer dereference" in lines[0]
    assert any("Oops: 0000 [#1]" in ln for ln in lines)
    assert "kvm_mmu_page_fault" in panic.value.excerpt
    con.close()


def test_warning_is_a_panic_unless_ignored(console_pair, tmp_path: Path) -> None:
    text = (DATA / "linux-warning-synthetic.log").read_bytes()
    con, guest, _ = console(console_pair, "0000000b")
    guest.play(text)
    with pytest.raises(GuestPanic) as panic:
        con.run("modprobe kvm_amd && echo loaded")
    assert "WARNING: CPU: 0 PID: 90" in panic.value.excerpt
    con.close()

    a, b = socket.socketpair()
    quiet = Console(a.detach(), log_path=tmp_path / "quiet.log", ignore_warnings=True,
                    new_tag=lambda: "0000000b", timeout=5.0, profile=GUEST_OSES["linux"].console)
    Guest(b).play(text)
    res = quiet.run("modprobe kvm_amd && echo loaded")
    assert (res.status, res.output) == (0, "loaded\n")   # kernel lines dropped ...
    assert "WARNING: CPU" in (tmp_path / "quiet.log").read_text()  # ... but logged
    quiet.close()
    b.close()


def test_echoed_command_line_mentioning_bug_is_no_panic(console_pair) -> None:
    con, guest, _ = console(console_pair, "0000000c")
    guest.play("/ # printf '%s%s\\n' @@B 0000000c@@; grep -c 'BUG: ' /log; printf '\\n%s%s"
               " %d\\n' @@E 0000000c@@ $?\n@@B0000000c@@\n0\n\n@@E0000000c@@ 1\n/ # ")
    res = con.run("grep -c 'BUG: ' /log", check=False)
    assert (res.status, res.output) == (1, "0\n")
    con.close()


def test_bug_line_in_output_is_a_panic_even_without_timestamp(console_pair) -> None:
    con, guest, _ = console(console_pair, "0000000d")
    guest.play("@@B0000000d@@\nBUG: unable to handle page fault for address: 0\n")
    with pytest.raises(GuestPanic):
        con.run("true")
    con.close()


def test_timeout_carries_the_last_lines(console_pair) -> None:
    con, guest, _ = console(console_pair, "0000000e")
    guest.play("some boot noise\nlast words\n", close=False)
    with pytest.raises(ConsoleTimeout) as err:
        con.run("sleep 100", timeout=0.3)
    assert isinstance(err.value, InfraError)
    assert "last words" in err.value.tail
    con.close()


def test_closed_console_is_an_infra_error(console_pair) -> None:
    con, guest, _ = console(console_pair, "0000000f")
    guest.play("@@B0000000f@@\npartial")
    with pytest.raises(ConsoleError) as err:
        con.run("true")
    assert not isinstance(err.value, ConsoleTimeout)
    assert "partial" in err.value.tail
    con.close()


def test_expect_returns_the_match(console_pair) -> None:
    con, guest, _ = console(console_pair)
    guest.play('@@SLAT {"event":"hold"}\n')
    m = con.expect(r'@@SLAT (\{.*\})\r?\n', timeout=5)
    assert m.group(1) == '{"event":"hold"}'
    con.close()


def test_framing_rules(console_pair) -> None:
    con, _, _ = console(console_pair)
    line = con.framed("sleep 5 &", "abc")
    assert "& printf" in line and "&;" not in line
    assert "@@Babc@@" not in line and "@@Eabc@@" not in line
    with pytest.raises(ValueError):
        con.framed("echo a\necho b", "abc")
    con.close()


@pytest.mark.parametrize("os_name,text", [
    ("openbsd", "panic: kernel diagnostic assertion failed\nStopped at db_enter+0x14:\n"
                "ddb{0}> "),
    ("openbsd", "uvm_fault(0xffffffff82a1d5d8, 0x8, 0, 1) -> e\n"),
    ("freebsd", "Fatal trap 12: page fault while in kernel mode\ncpuid = 0\n"),
    ("freebsd", "KDB: enter: panic\n[ thread pid 1 tid 100002 ]\ndb> "),
    ("dragonfly", "panic: vm_fault: fault on nofault entry\ncpuid = 0\n"
                  "Trace beginning at frame 0xfffff800\n"),
])
def test_bsd_panic_patterns(console_pair, os_name: str, text: str) -> None:
    con, guest, _ = console(console_pair, os_name=os_name)
    guest.play(text)
    with pytest.raises(GuestPanic) as panic:
        con.expect("never-printed", timeout=5)
    assert panic.value.os_name == os_name
    assert text.splitlines()[0] in panic.value.excerpt
    con.close()


def test_guest_os_registry() -> None:
    assert GUEST_OSES.names() == ["dragonfly", "freebsd", "linux", "openbsd"]
    with pytest.raises(RegistryLookupError, match="valid: dragonfly, freebsd, linux, openbsd"):
        GUEST_OSES["plan9"]


def test_large_output_is_complete(console_pair) -> None:
    con, guest, _ = console(console_pair, "00000010")
    body = [f"ffffffff8{i:07x} T sym_{i}" for i in range(30000)]   # ~1 MB, > search window
    text = "@@B00000010@@\n" + "\n".join(body) + "\n\n@@E00000010@@ 0\n"
    threading.Thread(target=guest.play, args=(text,), daemon=True).start()
    assert con.run("cat /proc/kallsyms", timeout=60).lines == body
    con.close()


def test_markers_and_panics_split_across_reads(console_pair) -> None:
    con, guest, _ = console(console_pair, "00000011", "00000012")
    text = ("@@B00000011@@\nok\n\n@@E00000011@@ 0\n"
            "@@B00000012@@\n[    1.000000] Kernel panic - not syncing: split\n")
    data = text.replace("\n", "\r\n").encode()

    def trickle() -> None:
        for i in range(0, len(data), 5):
            guest.peer.sendall(data[i:i + 5])
            time.sleep(0.002)
    threading.Thread(target=trickle, daemon=True).start()
    assert con.run("echo ok").output == "ok\n"
    with pytest.raises(GuestPanic, match="split"):
        con.run("true")
    con.close()


def test_console_over_a_pty_and_a_loopback_port(tmp_path: Path) -> None:
    import os
    import pty

    from harness.console import PtyEndpoint, TcpEndpoint
    master, slave = pty.openpty()
    con = Console.connect(PtyEndpoint(Path(os.ttyname(slave))), log_path=tmp_path / "p.log",
                          profile=GUEST_OSES["linux"].console, timeout=5.0)
    os.write(master, b"slat# ")           # no newline: arrives only on a raw pty
    with con:
        con.expect(r"slat# ", timeout=5)
        con.send_line("echo hi")
        assert b"echo hi" in os.read(master, 100)
    os.close(master)
    os.close(slave)
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    threading.Thread(target=lambda: server.accept()[0].sendall(b"hello\r\n"),
                     daemon=True).start()
    con = Console.connect(TcpEndpoint(port), log_path=tmp_path / "t.log",
                          profile=GUEST_OSES["linux"].console, timeout=5.0)
    with con:
        assert con.expect("hello", timeout=5).group(0) == "hello"
    server.close()
    with pytest.raises(ConsoleError, match="not on loopback"):
        Console.connect(TcpEndpoint(22, host="10.0.2.2"), log_path=tmp_path / "x.log",
                        profile=GUEST_OSES["linux"].console, retry_for=0)
