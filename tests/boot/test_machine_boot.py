"""Boots real QEMU: shell, exit statuses, GDB reads against independent oracles, cleanup.

Oracles: the guest's own ``/proc/version`` and ``/proc/kallsyms``, QEMU's own
address translation (HMP ``gva2gpa``), register dump (HMP ``info
registers``) and memory dump (QMP ``pmemsave``).  Tests that need no kernel
come first, so that at most one QEMU runs at a time.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.arch import ARCHES
from harness.console import Console, GuestCommandError
from harness.gdb import GdbSession
from harness.guests import GUEST_OSES
from harness.machines.base import DiskBoot, KernelBoot, MachineConfig
from harness.machines.qemu import QemuMachine
from harness.target import PhysView

LINUX = GUEST_OSES["linux"].console

pytestmark = [
    pytest.mark.boot,
    pytest.mark.skipif(shutil.which(ARCHES["x86_64"].qemu) is None,
                       reason=f"{ARCHES['x86_64'].qemu} is not installed"),
]


def gone(pid: int) -> bool:
    """True if *pid* no longer runs (absent, or a zombie nobody reaped yet)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in "ZX"
    except OSError:
        return True


def wait_gone(pids: list[int], limit: float = 20.0) -> list[int]:
    """The pids still running after up to *limit* seconds."""
    deadline = time.monotonic() + limit
    while any(not gone(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    return [p for p in pids if not gone(p)]


def blank_disk(where: Path) -> Path:
    """An empty raw disk: SeaBIOS finds nothing to boot and keeps trying."""
    disk = where / "blank.raw"
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(disk), "1M"], check=True)
    return disk


def Machine(artifacts: Path, name: str, boot: KernelBoot | DiskBoot | None = None,
            **kw: object) -> QemuMachine:
    """An x86 QEMU machine; without *boot*, a blank disk (firmware only)."""
    arch = ARCHES["x86_64"]
    artifacts.mkdir(parents=True, exist_ok=True)
    return QemuMachine(MachineConfig(arch=arch, boot=boot or DiskBoot(
        blank_disk(artifacts), format="raw"), artifacts=artifacts, cpu=arch.cpu, name=name,
        **kw))  # type: ignore[arg-type]


# -- lifecycle: no kernel needed (SeaBIOS just runs) ------------------------------

@pytest.mark.usefixtures("sigint_raises")
def test_sigint_in_block_leaves_nothing_behind(tmp_path: Path) -> None:
    pids: list[int] = []
    with pytest.raises(KeyboardInterrupt), Machine(artifacts=tmp_path, name="sigint") as m:
        sockdir = m.console_path.parent
        assert m.pid is not None
        pids.append(m.pid)
        with Console.connect(m.console, log_path=tmp_path / "console.log", profile=LINUX), \
                GdbSession(m.gdb_path, tmp_path / "gdb.log") as gdb:
            pids.append(gdb._ctl.gdb_process.pid)  # type: ignore[union-attr]
            assert gdb.running
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)   # not reached: the signal raises KeyboardInterrupt
    assert wait_gone(pids, limit=0.5) == []
    assert not sockdir.exists()
    assert (tmp_path / "console.log").exists()
    assert "-target-select remote" in (tmp_path / "gdb.log").read_text()
    assert m.exitcode is not None


CHILD = textwrap.dedent("""
    import subprocess, sys, time
    from pathlib import Path
    from harness.arch import ARCHES
    from harness.gdb import GdbSession
    from harness.machines.base import DiskBoot, MachineConfig
    from harness.machines.qemu import QemuMachine
    out = Path(sys.argv[1])
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(out / "d.raw"), "1M"])
    cfg = MachineConfig(arch=ARCHES["x86_64"], boot=DiskBoot(out / "d.raw", format="raw"),
                        artifacts=out, cpu="max", name="orphan")
    with QemuMachine(cfg) as m:
        with GdbSession(m.gdb_path, out / "gdb.log") as g:
            print(m.pid, g._ctl.gdb_process.pid, flush=True)
            time.sleep(600)
""")


def test_qemu_and_gdb_die_with_a_killed_harness(tmp_path: Path,
                                                request: pytest.FixtureRequest) -> None:
    # the killed child cannot remove its socket directory; a short TMPDIR keeps socket
    # paths under AF_UNIX's limit even under pytest-xdist's long tmp_path
    scratch = Path(tempfile.mkdtemp(prefix="slc-test-"))
    request.addfinalizer(lambda: shutil.rmtree(scratch, ignore_errors=True))
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path)],
                             stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parents[2],
                             env={**os.environ, "TMPDIR": str(scratch)})
    try:
        line = child.stdout.readline()  # type: ignore[union-attr]
        pids = [int(x) for x in line.split()]
        assert len(pids) == 2, f"child said {line!r}"
        assert wait_gone(pids, limit=0.5) == pids     # both alive
    finally:
        child.kill()
        child.wait()
    assert wait_gone(pids) == []
    assert sorted(p.name.split("-")[1] for p in scratch.iterdir()) == ["gdb", "orphan"]


def test_qmp_quit_is_the_soft_path(tmp_path: Path) -> None:
    with Machine(artifacts=tmp_path, name="soft") as m:
        assert m.qmp_command("query-status")["status"] == "running"
    assert m.exitcode == 0   # QEMU quit on its own; SIGTERM/SIGKILL give negative codes


# -- a booted Linux guest ---------------------------------------------------------

def test_state_saved_and_restored(tmp_path: Path) -> None:
    with Machine(tmp_path / "a", name="save") as m:
        m.save_state(tmp_path / "state.bin")
        assert m.qmp_command("query-status")["status"] == "running"   # resumed after
    assert (tmp_path / "state.bin").stat().st_size > 1 << 20
    with Machine(tmp_path / "b", name="restore", incoming=tmp_path / "state.bin") as m:
        assert m.qmp_command("query-status")["status"] == "running"
        assert "-incoming" in m.cmdline


@pytest.fixture(scope="module")
def guest(tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[tuple[QemuMachine, Console, object]]:
    from harness.images import build_image
    image = build_image("linux-amd64", progress=lambda line: None)
    art = tmp_path_factory.mktemp("boot")
    with Machine(art, name="boot", boot=image.boot_spec()) as m, \
            Console.connect(m.console, log_path=art / "console.log", profile=LINUX) as con:
        con.wait_for_shell(120)
        yield m, con, image
    assert (art / "console.log").stat().st_size > 0
    assert (art / "qemu.cmdline").read_text().startswith("qemu-system-")


def test_shell_commands_and_statuses(guest) -> None:
    m, con, image = guest
    assert con.run("uname -r").output.strip() == image.kernel_release
    assert con.run("(exit 3)", check=False).status == 3
    with pytest.raises(GuestCommandError) as err:
        con.run("cat /nonexistent-file")
    assert err.value.status != 0 and "nonexistent-file" in err.value.output
    lines = con.run("for i in 1 2 3; do echo line$i; done").lines
    assert lines == ["line1", "line2", "line3"]


def banner(con: Console) -> tuple[int, str]:
    """linux_banner's virtual address (kallsyms) and the guest's /proc/version."""
    va = con.run("grep ' linux_banner$' /proc/kallsyms").output.split()[0]
    return int(va, 16), con.run("cat /proc/version").output


def test_read_phys_matches_guest_and_qemu(guest, tmp_path: Path) -> None:
    m, con, _ = guest
    va, version = banner(con)
    assert version.startswith("Linux version ")
    with m.open_gdb_target(tmp_path) as target, target.halted():
        gpa = m.qmp_command("human-monitor-command", command_line=f"gva2gpa {va:#x}")
        pa = int(re.search(r"gpa: (0x[0-9a-f]+)", gpa).group(1), 16)  # type: ignore[union-attr]
        assert target.translate(va) == pa
        size = len(version.encode())
        phys = PhysView(target, target.ram_ranges()).read(pa, size)
        gdb = target.session                                   # type: ignore[attr-defined]
        assert phys.decode() == version                      # the guest's own view
        assert gdb.read_virt(va, size) == phys                # GDB's own translation
        m.pmemsave(pa, size, tmp_path / "banner.bin")
        assert (tmp_path / "banner.bin").read_bytes() == phys   # QEMU's dump
        big = gdb.read_phys(pa & ~0xfffff, 0x100000)          # dump-file path
        assert big[pa & 0xfffff:(pa & 0xfffff) + size] == phys
    assert con.run("echo resumed").output == "resumed\n"      # L1 runs after detach


def test_write_phys_seen_by_qemu_and_restored(guest, tmp_path: Path) -> None:
    m, con, _ = guest
    va, version = banner(con)
    with GdbSession(m.gdb_path, tmp_path / "gdb.log") as gdb, gdb.halted():
        gpa = m.qmp_command("human-monitor-command", command_line=f"gva2gpa {va:#x}")
        pa = int(re.search(r"gpa: (0x[0-9a-f]+)", gpa).group(1), 16)  # type: ignore[union-attr]
        original = gdb.read_phys(pa, 16)
        gdb.write_phys(pa, b"SLATCHECK-WROTE!")
        m.pmemsave(pa, 16, tmp_path / "w.bin")
        assert (tmp_path / "w.bin").read_bytes() == b"SLATCHECK-WROTE!"
        gdb.write_phys(pa, original)
        assert gdb.read_phys(pa, 16) == original == version.encode()[:16]


def test_registers_match_qemu_register_dump(guest, tmp_path: Path) -> None:
    m, _, _ = guest
    with GdbSession(m.gdb_path, tmp_path / "gdb.log") as gdb, gdb.halted():
        dump = m.qmp_command("human-monitor-command", command_line="info registers")
        for reg in ("cr3", "cr4"):
            want = int(re.search(rf"{reg.upper()}=([0-9a-f]+)", dump).group(1), 16)  # type: ignore[union-attr]
            assert gdb.register(reg) == want
        assert gdb.register("cr4") & (1 << 5)        # PAE: long mode needs it


def test_ram_ranges_cover_the_configured_memory(guest) -> None:
    m, _, _ = guest
    ranges = m.ram_ranges()
    total = sum(hi - lo for lo, hi in ranges)
    assert (1 << 30) - 0x100000 <= total <= 1 << 30    # -m 1G minus the legacy holes


def rsp_and_gdb_read(m: QemuMachine, tmp_path: Path, pa: int, size: int,
                     gdb: bool) -> tuple[bytes, dict[str, int], dict[str, int]]:
    """Through one client, in one halt: *size* bytes at *pa*, registers, and QEMU's own
    register dump of that same halt."""
    opener = m.open_gdb_target if gdb else m.open_target
    tmp_path.mkdir()
    with opener(tmp_path) as target, target.halted():
        data = target.read_phys(pa, size)
        regs = {r: target.register(r) for r in ("cr0", "cr3", "cr4", "efer", "rip", "rsp")}
        dump = m.qmp_command("human-monitor-command", command_line="info registers")
    qemu = {r: int(re.search(rf"\b{r.upper()}=([0-9a-f]+)", dump).group(1), 16)  # type: ignore[union-attr]
            for r in regs}
    return data, regs, qemu


def test_rsp_and_gdb_agree_on_the_same_l1(guest, tmp_path: Path) -> None:
    """The remote-protocol target and gdb read the same bytes and registers.

    Kernel text and read-only data do not change while L1 runs: 1 MiB around
    linux_banner must read the same through both and through QMP's pmemsave.
    Volatile registers differ from one halt to the next, so each client is held to
    QEMU's own register dump of its own halt, and the stable ones to each other.
    """
    m, con, _ = guest
    va, version = banner(con)
    pa = m.translate(va)
    base = pa & ~0xFFFFF
    via_rsp, regs_rsp, qemu_rsp = rsp_and_gdb_read(m, tmp_path / "r", base, 0x100000, False)
    via_gdb, regs_gdb, qemu_gdb = rsp_and_gdb_read(m, tmp_path / "g", base, 0x100000, True)
    m.pmemsave(base, 0x100000, tmp_path / "pmem.bin")
    assert via_rsp == via_gdb == (tmp_path / "pmem.bin").read_bytes()
    assert version.encode() in via_rsp
    assert regs_rsp == qemu_rsp and regs_gdb == qemu_gdb
    for stable in ("cr0", "cr4", "efer"):
        assert regs_rsp[stable] == regs_gdb[stable]
    assert (tmp_path / "r" / "rsp.log").exists() and (tmp_path / "g" / "gdb.log").exists()
    assert con.run("echo resumed").output == "resumed\n"      # L1 runs after both


def test_rsp_write_and_breakpoint(guest, tmp_path: Path) -> None:
    """Writes land (QEMU's pmemsave sees them); a breakpoint on a kernel function the
    guest is made to call stops the L1 there, and is removed again."""
    from harness.rsp import RspTarget
    m, con, _ = guest
    va, version = banner(con)
    pa = m.translate(va)
    fn = int(con.run("grep ' T __x64_sys_execve$' /proc/kallsyms").output.split()[0], 16)
    with m.open_target(tmp_path) as target:
        assert isinstance(target, RspTarget)
        with target.halted():
            original = target.read_phys(pa, 16)
            target.write_phys(pa, b"SLATCHECK-WROTE!")
            m.pmemsave(pa, 16, tmp_path / "w.bin")
            assert (tmp_path / "w.bin").read_bytes() == b"SLATCHECK-WROTE!"
            target.write_phys(pa, original)
            target.client.insert_breakpoint(fn)
        con.send_line("/bin/busybox true; echo after-exec")
        stop = target.client.wait_stop(timeout=30)
        with target.halted():
            assert stop.startswith(b"T05") and target.register("rip") == fn
            target.client.remove_breakpoint(fn)
        target.client.cont()
        con.expect("after-exec", timeout=30)
    assert con.run("echo resumed").output == "resumed\n"
    assert con.run("cat /proc/version").output == version
