"""GdbSession against a fake gdb that speaks MI text (parsed by pygdbmi itself), no VM."""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import pytest
from pygdbmi import gdbmiparser

from harness.errors import InfraError, MemoryReadError
from harness.gdb import CHUNK, GdbError, GdbSession, GdbTarget
from harness.mem import DictMem
from harness.target import PhysView, VirtView


class FakeProcess:
    """Stands in for the gdb subprocess."""

    def __init__(self) -> None:
        self.returncode: int | None = None

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            self.returncode = 0
        return self.returncode

    def terminate(self) -> None:
        self.returncode = -15

    kill = terminate


class FakeGdb:
    """A tiny MI gdb attached to a fake QEMU stub: two address spaces and registers."""

    def __init__(self) -> None:
        self.gdb_process = FakeProcess()
        self.phys = DictMem(size=1 << 24)
        self.virt = DictMem(size=1 << 24)
        self.regs = {"cr4": 0x3506f0, "cr3": 0x10a000}
        self.mode = 0
        self.running = False
        self.sent: list[str] = []
        self.pending: list[str] = []
        self.short_reads = False       # reply with fewer bytes than asked
        self.die_on: str | None = None  # gdb "crashes" on a command containing this

    # -- the MiController interface ---------------------------------------------

    def write(self, cmd: str, timeout_sec: float = 1, raise_error_on_timeout: bool = True,
              read_response: bool = True) -> list[dict]:
        self.sent.append(cmd)
        if self.die_on and self.die_on in cmd:
            self.gdb_process.returncode = -11
            return []
        tok, body = re.match(r"(\d*)(.*)", cmd).groups()  # type: ignore[union-attr]
        self.pending += self.answer(tok, body)
        return []

    def get_gdb_response(self, timeout_sec: float = 1,
                         raise_error_on_timeout: bool = True) -> list[dict]:
        out = [gdbmiparser.parse_response(line) for line in self.pending]
        self.pending = []
        return out

    # -- MI semantics -----------------------------------------------------------

    def answer(self, tok: str, body: str) -> list[str]:
        if body.startswith("-gdb-set") or body == "-target-detach":
            return [f"{tok}^done"]
        if body.startswith("-target-select remote"):
            return [f"{tok}^connected"]
        if body == "-exec-continue":
            self.running = True
            return [f"{tok}^running", '*running,thread-id="all"']
        if body == "-exec-interrupt":
            self.running = False
            return [f"{tok}^done", '*stopped,reason="signal-received",signal-name="SIGINT"']
        if body == "-gdb-exit":
            self.gdb_process.returncode = 0
            return []
        if self.running:
            return [f'{tok}^error,msg="Cannot execute this command while the target is running."']
        if body.startswith("-data-read-memory-bytes"):
            return self.read(tok, *[int(x, 0) for x in body.split()[1:]])
        if body.startswith("-data-write-memory-bytes"):
            _, addr, hexdata = body.split()
            self.space().write(int(addr, 0), bytes.fromhex(hexdata))
            return [f"{tok}^done"]
        if body.startswith("-data-evaluate-expression"):
            name = re.search(r"\$(\w+)", body).group(1)  # type: ignore[union-attr]
            return [f'{tok}^done,value="{self.regs[name]}"']
        if body.startswith("-interpreter-exec console"):
            return self.console(tok, shlex.split(body)[2])
        return [f'{tok}^error,msg="unknown command {body}"']

    def space(self) -> DictMem:
        return self.phys if self.mode else self.virt

    def read(self, tok: str, addr: int, size: int) -> list[str]:
        try:
            data = self.space().read(addr, size)
        except MemoryReadError:
            return [f'{tok}^error,msg="Unable to read memory."']
        if self.short_reads:
            data = data[:size // 2]
        end = addr + len(data)
        return [f'{tok}^done,memory=[{{begin="{addr:#x}",offset="0x0",end="{end:#x}",'
                f'contents="{data.hex()}"}}]']

    def console(self, tok: str, cli: str) -> list[str]:
        words = cli.split()
        if cli == "maintenance packet qqemu.PhyMemMode":
            return [f'~"sending: \\"{words[2]}\\"\\n"',
                    f'~"received: \\"{self.mode}\\"\\n"', f"{tok}^done"]
        if cli.startswith("maintenance packet Qqemu.PhyMemMode:"):
            self.mode = int(cli[-1])
            return [f'~"sending: \\"{words[2]}\\"\\n"', '~"received: \\"OK\\"\\n"',
                    f"{tok}^done"]
        if cli.startswith("dump binary memory"):
            path, lo, hi = words[3], int(words[4], 0), int(words[5], 0)
            Path(path).write_bytes(self.space().read(lo, hi - lo))
            return [f"{tok}^done"]
        return [f'{tok}^error,msg="Undefined command: \\"{words[0]}\\"."']


@pytest.fixture
def fake() -> FakeGdb:
    g = FakeGdb()
    g.phys.write(0x5000, b"physical page")
    g.virt.write(0x5000, b"virtual  page")
    return g


def session(fake: FakeGdb, tmp_path: Path, **kw: object) -> GdbSession:
    s = GdbSession(tmp_path / "gdb.sock", tmp_path / "gdb.log", spawn=lambda gdb: fake,
                   **kw)  # type: ignore[arg-type]
    return s.__enter__()


def execs(fake: FakeGdb) -> list[str]:
    return [c for c in fake.sent if "-exec-" in c]


def test_attach_sets_architecture_and_resumes(fake: FakeGdb, tmp_path: Path) -> None:
    s = session(fake, tmp_path)
    assert any(c.endswith("-gdb-set architecture i386:x86-64") for c in fake.sent)
    assert any(c.endswith(f"-target-select remote {tmp_path / 'gdb.sock'}") for c in fake.sent)
    assert s.running and fake.running
    s.close()
    assert any(c.endswith("-target-detach") for c in fake.sent)
    assert fake.gdb_process.poll() is not None
    log = (tmp_path / "gdb.log").read_text()
    assert "-target-select remote" in log and '"connected"' in log


def test_attach_without_resume_stays_stopped(fake: FakeGdb, tmp_path: Path) -> None:
    s = session(fake, tmp_path, resume=False, arch="aarch64")
    assert not s.running and execs(fake) == []
    assert any(c.endswith("-gdb-set architecture aarch64") for c in fake.sent)
    s.close()


def test_halted_stops_and_resumes_only_if_running(fake: FakeGdb, tmp_path: Path) -> None:
    s = session(fake, tmp_path)
    fake.sent.clear()
    with s.halted():
        assert not fake.running
        with s.halted():            # nested: already stopped, stays stopped
            pass
        assert not fake.running
    assert fake.running
    assert [c.lstrip("0123456789") for c in execs(fake)] == ["-exec-interrupt",
                                                             "-exec-continue"]
    s.interrupt()
    fake.sent.clear()
    with s.halted():
        pass
    assert execs(fake) == [] and not fake.running
    s.close()


def test_read_phys_uses_physical_mode_and_restores(fake: FakeGdb, tmp_path: Path) -> None:
    s = session(fake, tmp_path)
    assert s.read_phys(0x5000, 13) == b"physical page"
    assert fake.mode == 0                      # restored
    assert s.read_virt(0x5000, 13) == b"virtual  page"
    assert fake.running                         # resumed after the read
    fake.mode = 1                               # someone left the stub physical
    s._mode = None
    assert s.read_virt(0x5000, 13) == b"virtual  page"
    assert fake.mode == 1                       # previous mode restored
    s.close()


def test_memory_mode_block_switches_once(fake: FakeGdb, tmp_path: Path) -> None:
    s = session(fake, tmp_path)
    with s.halted(), s.memory_mode(physical=True):
        before = len(fake.sent)
        for off in range(0, 64, 8):
            s.read_phys(0x5000 + off, 8)
        switches = [c for c in fake.sent[before:] if "PhyMemMode" in c]
    assert switches == []
    s.close()


def test_large_reads_go_through_a_dump_file(fake: FakeGdb, tmp_path: Path) -> None:
    blob = bytes(range(256)) * ((3 * CHUNK) // 256)
    fake.phys.write(0x100000, blob)
    s = session(fake, tmp_path)
    assert s.read_phys(0x100000, len(blob)) == blob
    assert any("dump binary memory" in c for c in fake.sent)
    scratch = s._scratch
    s.close()
    assert scratch is not None and not scratch.exists()


def test_short_read_raises(fake: FakeGdb, tmp_path: Path) -> None:
    s = session(fake, tmp_path)
    fake.short_reads = True
    with pytest.raises(MemoryReadError, match="short read"):
        s.read_phys(0x5000, 16)
    assert fake.mode == 0 and fake.running    # cleanup ran despite the error
    s.close()


def test_unreadable_memory_raises(fake: FakeGdb, tmp_path: Path) -> None:
    s = session(fake, tmp_path)
    with pytest.raises(MemoryReadError, match="Unable to read memory"):
        s.read_phys(1 << 24, 8)
    with pytest.raises(MemoryReadError):
        s.read_phys((1 << 24) - CHUNK, 2 * CHUNK)   # through the dump path
    s.close()


def test_lost_gdb_is_gdb_error_not_memory_error(fake: FakeGdb, tmp_path: Path) -> None:
    s = session(fake, tmp_path)
    fake.die_on = "-data-read-memory-bytes"
    with pytest.raises(GdbError) as err:
        s.read_phys(0x5000, 8)
    assert not isinstance(err.value, MemoryReadError)
    assert isinstance(err.value, InfraError)
    s.close()


def test_remote_connection_closed_is_gdb_error(fake: FakeGdb, tmp_path: Path) -> None:
    s = session(fake, tmp_path)
    fake.pending.append('&"Remote connection closed\\n"')
    with pytest.raises(GdbError, match="lost the gdbstub"):
        s.read_phys(0x5000, 8)
    s.close()


def test_write_phys_round_trip(fake: FakeGdb, tmp_path: Path) -> None:
    s = session(fake, tmp_path)
    s.write_phys(0x6000, b"\x37" * 8)
    assert fake.phys.read(0x6000, 8) == b"\x37" * 8
    assert fake.virt.read(0x6000, 8) == bytes(8)
    s.close()


def test_registers(fake: FakeGdb, tmp_path: Path) -> None:
    s = session(fake, tmp_path)
    assert s.register("cr4") == 0x3506f0
    assert s.register("cr3", cpu=1) == 0x10a000
    assert any("--thread 2" in c for c in fake.sent)
    with pytest.raises(ValueError):
        s.register("cr4; shell")
    fake.regs["cr0"] = "<unavailable>"  # type: ignore[assignment]
    with pytest.raises(GdbError):
        s.register("cr0")
    s.close()


def test_target_adapters_and_ram_bounds(fake: FakeGdb, tmp_path: Path) -> None:
    s = session(fake, tmp_path)
    t = GdbTarget(s, ram_ranges=lambda: [(0, 0x8000)], translate=lambda va: va - 0x1000)
    pm = PhysView(t, t.ram_ranges())
    assert pm.read(0x5000, 8) == b"physical"
    assert VirtView(t).read(0x5000, 7) == b"virtual"
    assert t.translate(0x6000) == 0x5000
    sent = len(fake.sent)
    with pytest.raises(MemoryReadError, match="outside the L1's RAM"):
        pm.read(0x7ffc, 8)              # straddles the end of RAM
    assert len(fake.sent) == sent      # refused before asking gdb
    s.close()


def test_commands_after_close_raise(fake: FakeGdb, tmp_path: Path) -> None:
    s = session(fake, tmp_path)
    s.close()
    s.close()                           # idempotent
    with pytest.raises(GdbError, match="not attached"):
        s.read_phys(0, 8)


@pytest.mark.skipif(shutil.which("gdb") is None, reason="gdb is not installed")
def test_real_gdb_without_a_stub_fails_cleanly(tmp_path: Path) -> None:
    pids: list[int] = []

    def spawn(gdb: str):  # the real controller, remembering its pid
        from harness.gdb import _spawn_gdb
        ctl = _spawn_gdb(gdb)
        pids.append(ctl.gdb_process.pid)
        return ctl
    with pytest.raises(GdbError, match="No such file"), \
            GdbSession(tmp_path / "missing.sock", tmp_path / "gdb.log", spawn=spawn):
        pass
    assert pids and not Path(f"/proc/{pids[0]}").exists()   # gdb ended and reaped
