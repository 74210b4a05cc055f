"""The OpenBSD guest record offline: ddb collection on a panic (a scripted ddb on a socket),
the observer over constructed vmm memory and RVI tables, vmd's status parsing and the
``driver: vmd`` validation."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest
from encoders import NptEncoder, Spec, build
from test_discovery_openbsd import DESIGN_NEW, KERNBASE, MEM, SOFTC_SYM, VM_A
from test_discovery_openbsd import build as build_vmm

from harness import openbsd_vmd as vmd
from harness.arch import ARCHES
from harness.console import Console, GuestPanic
from harness.errors import ScenarioError
from harness.formats.npt import NptCodec
from harness.guests import GUEST_OSES
from harness.observe import KernelView
from harness.observe.openbsd_vmm import observe
from harness.scenario import load_scenario
from harness.target import FakeTarget, l1_memories

BOOT = ("OpenBSD 7.9 (GENERIC.MP) #0\ncpu0 at mainbus0: apid 0 (boot processor)\n"
        "cpu1 at mainbus0: apid 1 (application processor)\nvmm0 at mainbus0: SVM/RVI\n")
PANIC = ('panic: kernel diagnostic assertion "vm->vm_pmap != NULL" failed\n'
         "Stopped at      db_enter+0x14:  popq    %rbp\n"
         "https://www.openbsd.org/ddb.html describes the minimum info required in bug\n"
         "ddb{1}> ")
ANSWERS = {"show panic": "*cpu1: kernel diagnostic assertion failed\n",
           "trace": "db_enter() at db_enter+0x14\npanic() at panic+0xd5\n",
           "ps": "   PID   PPID  COMMAND\n 51511      1  vmd\n",
           "show registers": "rdi  0x1\nrip  0xffffffff81234567\n",
           "machine ddbcpu 0": "Stopped at      x86_ipi_db+0x16:        leave\n"}


def fake_ddb(peer: socket.socket, typed: list[str]) -> None:
    """Answer each line typed at the ddb prompt, with the prompt of the CPU it is on."""
    cpu, buf = 1, b""
    peer.sendall((BOOT + PANIC).replace("\n", "\r\n").encode())
    while True:
        chunk = peer.recv(4096)
        if not chunk:
            return
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            cmd = line.decode().strip()
            typed.append(cmd)
            if cmd.startswith("machine ddbcpu "):
                cpu = int(cmd.split()[-1])
            out = "trace of another cpu\n" if cmd == "trace" and cpu != 1 else \
                ANSWERS.get(cmd, "")
            peer.sendall((f"{cmd}\n{out}ddb{{{cpu}}}> ").replace("\n", "\r\n").encode())


def test_panic_runs_ddb_on_every_cpu_and_saves_it(tmp_path: Path) -> None:
    a, b = socket.socketpair()
    typed: list[str] = []
    t = threading.Thread(target=fake_ddb, args=(b, typed), daemon=True)
    t.start()
    con = Console(a.detach(), log_path=tmp_path / "console.log", timeout=5.0,
                  profile=GUEST_OSES["openbsd"].console)
    with pytest.raises(GuestPanic) as panic:
        con.expect("never-printed", timeout=5)
    con.close()
    b.close()
    # entered on CPU 1 of 2: its view, then CPU 0's trace, then back to CPU 1
    assert typed == ["show panic", "trace", "ps", "show registers", "machine ddbcpu 0",
                     "trace", "machine ddbcpu 1"]
    saved = (tmp_path / "debugger.txt").read_text()
    for cmd in ("show panic", "trace", "ps", "machine ddbcpu 0"):
        assert f"ddb> {cmd}\n{ANSWERS[cmd]}" in saved
    assert "trace of another cpu" in saved
    assert panic.value.verdict == "panic" and "debugger.txt" in panic.value.excerpt


def test_a_silent_ddb_does_not_hang_the_run(tmp_path: Path) -> None:
    a, b = socket.socketpair()
    b.sendall((BOOT + PANIC).replace("\n", "\r\n").encode())
    con = Console(a.detach(), log_path=tmp_path / "console.log", timeout=5.0,
                  profile=GUEST_OSES["openbsd"].console)
    from harness import ddb
    old, ddb.DDB_TIMEOUT = ddb.DDB_TIMEOUT, 0.5
    try:
        with pytest.raises(GuestPanic):
            con.expect("never-printed", timeout=5)
    finally:
        ddb.DDB_TIMEOUT = old
        con.close()
        b.close()
    assert "no debugger prompt" in (tmp_path / "debugger.txt").read_text()


def test_observer_walks_only_the_top_slots_of_vm_memranges() -> None:
    mem, ctf = build_vmm(DESIGN_NEW, 2, [VM_A])
    leaves = [Spec(0x2000, 0x1200000, 0x1000, True, True, True),
              Spec(0x100000, 0x1201000, 0x1000, True, True, True)]
    build(mem, NptEncoder(), VM_A.root, 4, leaves)
    # a kernel slot as pmap_pdp_ctor leaves it in an RVI top level (no PG_u): not walked
    mem.write(VM_A.root + 8 * 256, (0x1300000 | 0x3).to_bytes(8, "little"))
    page = SOFTC_SYM & ~0xFFF          # vmm_softc lies in the kernel image: a virtual read
    target = FakeTarget(mem, registers={"cs": 0x8}, virt={page: page - KERNBASE})
    view = KernelView(target=target, arch=ARCHES["x86_64"],
                      mem=l1_memories(target, [(0, MEM)]), symbols={"vmm_softc": SOFTC_SYM},
                      types=ctf)
    (ob,) = observe(view)
    assert ob.format == "npt" and ob.root == VM_A.root
    assert sorted((m.gpa, m.hpa) for m in ob.walk.mappings) == [(0x2000, 0x1200000),
                                                                (0x100000, 0x1201000)]
    assert ob.params.top_slots == (0,)
    assert ob.slot_hvas == frozenset(v for _g, v, _s, t in VM_A.ranges if t != 2)
    assert ob.discovery["vm_name"] == "l2-b" and ob.discovery["pid"] == 4002
    assert ob.discovery["checks"]["vmcb nCR3 == pm_pdirpa"] is True



def test_observer_walks_with_the_l1s_maxphyaddr_so_a_4k_leaf_has_a_reserved_bit() -> None:
    """vmm-inject-reserved-bit: with MAXPHYADDR 52 a 4 KiB RVI leaf has no reserved bit;
    the machine's (QEMU TCG: 40) gives bit 51, and the walk reports it."""
    mem, ctf = build_vmm(DESIGN_NEW, 2, [VM_A])
    build(mem, NptEncoder(), VM_A.root, 4, [Spec(0x2000, 0x1200000, 0x1000, True, True, True)])
    page = SOFTC_SYM & ~0xFFF
    target = FakeTarget(mem, registers={"cs": 0x8}, virt={page: page - KERNBASE})

    def view() -> KernelView:    # a new halt: nothing read before is cached
        return KernelView(target=target, arch=ARCHES["x86_64"],
                          mem=l1_memories(target, [(0, MEM)]),
                          symbols={"vmm_softc": SOFTC_SYM}, types=ctf,
                          facts={"maxphyaddr": 40})
    (ob,) = observe(view())
    assert ob.params.maxphyaddr == 40
    (leaf,) = ob.walk.mappings
    bad = NptCodec(ob.params).with_reserved(leaf.raw, leaf.level)
    assert bad == leaf.raw | 1 << 51
    mem.write(leaf.entry, bad.to_bytes(8, "little"))
    (again,) = observe(view())
    assert [(f.kind, f.gpa) for f in again.walk.findings] == [("reserved_bits", 0x2000)]

def test_vmctl_status_parsing() -> None:
    assert vmd.parse_status(vmd.STATUS_EXAMPLE, "slat-w1") == (1, 43210, "running")
    assert vmd.parse_status(vmd.STATUS_EXAMPLE, "slat-w2") is None
    stopped = vmd.STATUS_EXAMPLE.replace("43210", "    -").replace("running", "stopped")
    assert vmd.parse_status(stopped, "slat-w1") == (1, None, "stopped")
    assert vmd.parse_status("vmctl: connect: /var/run/vmd.sock: No such file", "x") is None
    with pytest.raises(Exception, match="multiple of 1 MiB"):
        vmd.start_command("w1", 0x1000)


def test_driver_vmd_validation(tmp_path: Path) -> None:
    base = (Path(__file__).resolve().parents[2] / "scenarios" / "openbsd" /
            "vmd-smoke.yaml").read_text()
    bad = base.replace("- {gpa: 0x0, size: 64M}",
                       "- {gpa: 0x1000, size: 64M}\n      touch: [{gpa: 0x2000, access: w}]")
    (tmp_path / "bad.yaml").write_text(bad)
    with pytest.raises(ScenarioError) as err:
        load_scenario(tmp_path / "bad.yaml")
    text = str(err.value)
    assert "one slot {gpa: 0, size: S}" in text and "takes no touches" in text
    linux = (Path(__file__).resolve().parents[2] / "scenarios" / "linux" /
             "kvm-npt-smoke.yaml").read_text().replace("      id: w1\n",
                                                       "      id: w1\n      driver: vmd\n")
    (tmp_path / "linux.yaml").write_text(linux)
    with pytest.raises(ScenarioError, match="driver vmd runs in an OpenBSD guest"):
        load_scenario(tmp_path / "linux.yaml")
