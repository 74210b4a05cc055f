"""Machine: command line, socket directory, launch failures and cleanup (no VM).

Launch failures are driven by small fake "QEMU" scripts, so these tests need
no QEMU binary.
"""

from __future__ import annotations

import dataclasses
import stat
from pathlib import Path

import pytest

import harness.machines.qemu as qemu
from harness.arch import ARCHES
from harness.errors import InfraError, RegistryLookupError
from harness.machines.base import DiskBoot, KernelBoot, MachineConfig
from harness.machines.qemu import QemuLaunchError, QemuMachine, parse_ram_ranges


def Machine(*, arch: str = "x86_64", artifacts: Path, cpu: str | None = None,
            boot: KernelBoot | DiskBoot | None = None, accel: str = "tcg",
            fault_log: bool = False, extra_args: tuple[str, ...] = ()) -> QemuMachine:
    """A QEMU machine from a config with the given fields."""
    a = ARCHES[arch]
    return QemuMachine(MachineConfig(
        arch=a, boot=boot or KernelBoot(Path("vmlinuz")), artifacts=artifacts,
        cpu=cpu or a.cpu, accel=accel, fault_log=fault_log, extra_args=extra_args))


def launched_dir(m: QemuMachine) -> Path:
    """Run the pre-launch hook only (creates the private socket directory)."""
    m._check_accel = lambda: None  # type: ignore[method-assign]
    m._pre_launch()
    assert m._sockdir is not None
    return m._sockdir


def test_x86_command_line(tmp_path: Path) -> None:
    m = Machine(boot=KernelBoot(Path("vmlinuz"), Path("initrd.gz"), "console=ttyS0 quiet"),
                artifacts=tmp_path)
    sockdir = launched_dir(m)
    try:
        cmd = m.build_cmdline()
        assert cmd[0] == "qemu-system-x86_64"
        joined = " ".join(cmd)
        for opt in ("-nodefaults", "-no-reboot"):
            assert opt in cmd
        assert cmd[cmd.index("-display") + 1] == "none"
        assert cmd[cmd.index("-cpu") + 1] == "max"
        assert cmd[cmd.index("-accel") + 1] == "tcg"
        assert cmd[cmd.index("-append") + 1] == "console=ttyS0 quiet"
        assert "-serial" in cmd and cmd[cmd.index("-serial") + 1] == "chardev:con0"
        assert cmd[cmd.index("-gdb") + 1] == "chardev:gdb0"
        assert f"path={sockdir}/qmp.sock,server=on,wait=off" in joined
        assert f"path={sockdir}/console.sock,server=on,wait=off" in joined
        assert "tcp" not in joined and "-s" not in cmd
        assert "-d" not in cmd
    finally:
        m.shutdown()


def test_private_socket_directory_is_0700_and_removed(tmp_path: Path) -> None:
    m = Machine(artifacts=tmp_path / "art")
    sockdir = launched_dir(m)
    assert stat.S_IMODE(sockdir.stat().st_mode) == 0o700
    assert m.console_path.parent == m.qmp_path.parent == m.gdb_path.parent == sockdir
    m.shutdown()
    assert not sockdir.exists()
    m.shutdown()  # idempotent


def test_aarch64_defaults_and_cpu_choice(tmp_path: Path) -> None:
    m = Machine(arch="aarch64", cpu="cortex-a57", artifacts=tmp_path)
    launched_dir(m)
    try:
        cmd = m.build_cmdline()
        assert cmd[0] == "qemu-system-aarch64"
        assert cmd[cmd.index("-M") + 1] == "virt,virtualization=on,gic-version=3"
        assert cmd[cmd.index("-cpu") + 1] == "cortex-a57"
        assert ARCHES["aarch64"].console == "ttyAMA0"
        assert ARCHES["aarch64"].gdb == "gdb-multiarch"
    finally:
        m.shutdown()


def test_vmrun_log_arguments(tmp_path: Path) -> None:
    m = Machine(artifacts=tmp_path, fault_log=True, extra_args=("-S",))
    launched_dir(m)
    try:
        cmd = m.build_cmdline()
        i = cmd.index("-d")
        assert cmd[i:i + 6] == ["-d", "in_asm", "-dfilter", "0x0+0x1", "-D",
                                str(tmp_path / "qemu.log")]
        assert cmd[-1] == "-S"
    finally:
        m.shutdown()


def test_unknown_arch_lists_valid_names(tmp_path: Path) -> None:
    with pytest.raises(RegistryLookupError, match="aarch64, x86_64"):
        Machine(arch="riscv64", artifacts=tmp_path)


def test_disk_boot_gets_a_private_overlay(tmp_path: Path) -> None:
    disk = tmp_path / "base.qcow2"
    import subprocess
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "16M"], check=True)
    m = Machine(boot=DiskBoot(disk, cdrom=tmp_path / "install.iso",
                              network=("-nic", "user,model=virtio-net-pci")),
                artifacts=tmp_path / "art")
    sockdir = launched_dir(m)
    try:
        cmd = m.build_cmdline()
        overlay = sockdir / "overlay.qcow2"
        assert f"file={overlay},format=qcow2,if=virtio" in cmd
        assert f"file={tmp_path / 'install.iso'},format=raw,media=cdrom,readonly=on" in cmd
        assert cmd[cmd.index("-nic") + 1] == "user,model=virtio-net-pci"
        assert "-kernel" not in cmd
        info = subprocess.run(["qemu-img", "info", str(overlay)], capture_output=True,
                              text=True, check=True).stdout
        assert str(disk) in info                      # backed by the cached disk ...
    finally:
        m.shutdown()
    assert not overlay.exists()                       # ... and thrown away with the run


def test_kvm_refused_where_dev_kvm_is_unusable(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(qemu, "kvm_usable", lambda path="/dev/kvm": False)
    with pytest.raises(InfraError, match="/dev/kvm"), \
            Machine(accel="kvm", artifacts=tmp_path):
        pass


def test_kvm_usable_false_for_a_non_kvm_file(tmp_path: Path) -> None:
    f = tmp_path / "not-kvm"
    f.write_text("")
    assert qemu.kvm_usable(str(f)) is False
    assert qemu.kvm_usable(str(tmp_path / "missing")) is False


def fake_qemu(tmp_path: Path, body: str) -> Path:
    """A shell script standing in for QEMU."""
    script = tmp_path / "fake-qemu"
    script.write_text("#!/bin/sh\n" + body + "\n")
    script.chmod(0o755)
    return script


def machine_with(tmp_path: Path, binary: Path) -> QemuMachine:
    a = dataclasses.replace(ARCHES["x86_64"], qemu=str(binary))
    return QemuMachine(MachineConfig(arch=a, boot=KernelBoot(Path("vmlinuz")),
                                     artifacts=tmp_path / "art", cpu="max"))


def test_early_exit_raises_launch_error_with_output_tail(tmp_path: Path) -> None:
    binary = fake_qemu(tmp_path, 'echo "qemu: -bogus: invalid option" >&2; exit 1')
    m = machine_with(tmp_path, binary)
    with pytest.raises(QemuLaunchError) as err, m:
        pass
    assert "invalid option" in err.value.output_tail
    assert err.value.cmdline[0] == str(binary)
    assert "exited early" in str(err.value)
    # the command line was written before the start, the socket dir is gone
    assert (tmp_path / "art" / "qemu.cmdline").read_text().startswith(str(binary))
    assert m._sockdir is not None and not m._sockdir.exists()


def test_sockets_never_appear_kills_the_process(tmp_path: Path) -> None:
    binary = fake_qemu(tmp_path, "echo started; exec sleep 60")
    m = machine_with(tmp_path, binary)
    m.launch_timeout = 0.5
    with pytest.raises(QemuLaunchError, match="sockets did not appear") as err:
        m.launch()
    assert "started" in err.value.output_tail
    assert m.pid is not None and not m.alive()
    assert not Path(f"/proc/{m.pid}").exists()   # killed and reaped


def test_sigterm_fallback_when_qmp_is_absent(tmp_path: Path) -> None:
    m = machine_with(tmp_path, fake_qemu(tmp_path, "exec sleep 60"))
    m._check_accel = lambda: None  # type: ignore[method-assign]
    m._pre_launch()
    m._cmdline = m.build_cmdline()
    m._spawn()
    assert m.alive()
    pid = m.pid
    m.shutdown(timeout=2.0)
    assert not m.alive() and m.exitcode is not None and m.exitcode < 0   # by a signal
    assert not Path(f"/proc/{pid}").exists()


def test_qmp_command_before_launch_is_infra_error(tmp_path: Path) -> None:
    with pytest.raises(InfraError, match="not running"):
        Machine(artifacts=tmp_path).qmp_command("query-status")


MTREE_X86 = """FlatView #0
 AS "I/O", root: io
 Root memory region: io
  0000000000000000-0000000000000007 (prio 0, i/o): dma-chan

FlatView #1
 AS "memory", root: system
 AS "cpu-memory-0", root: system
 Root memory region: system
  0000000000000000-00000000000bffff (prio 0, ram): pc.ram
  00000000000c0000-00000000000dffff (prio 1, rom): pc.rom
  00000000000e0000-00000000000fffff (prio 0, rom): pc.bios @0000000000020000
  0000000000100000-00000000bfffffff (prio 0, ram): pc.ram @0000000000100000
  00000000c0000000-00000000c0000fff (prio 0, ram): extra.ram
  00000000fec00000-00000000fec00fff (prio 0, i/o): ioapic
  0000000100000000-000000013fffffff (prio 0, ram): pc.ram @00000000c0000000
"""


def test_parse_ram_ranges_takes_the_memory_view_and_merges() -> None:
    # recorded from QEMU 7.2 `info mtree -f` (-m 4G), one adjacent range added
    assert parse_ram_ranges(MTREE_X86) == [
        (0x0, 0xc0000), (0x100000, 0xc0001000), (0x100000000, 0x140000000)]
    with pytest.raises(InfraError):
        parse_ram_ranges(MTREE_X86.split("FlatView #1")[0])
