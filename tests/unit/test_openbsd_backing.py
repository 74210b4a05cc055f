"""The backing truth on a BSD L1: a process's own page tables, found from its pid.

The process page tables are written by the independent table encoder of the tests
(``encoders.NptEncoder``: NPT entries are x86-64 long-mode entries), the kernel's
``allprocess`` list and ``struct process``/``vmspace``/``pmap`` at the offsets of
the independent CTF writer; the code under test only meets them in the bytes.
"""

from __future__ import annotations

import struct

import pytest
from ctf_writer import CtfWriter
from encoders import NptEncoder, Spec, build

from harness.ctf import Ctf
from harness.discovery.linux_kvm_common import KernelReader
from harness.discovery.openbsd_proc import PROC_SYMBOLS, process_frames, process_pmap_root
from harness.discovery.openbsd_vmm import KERNBASE, PMAP_DIRECT_BASE, DirectMapMem
from harness.discovery.x86_pagetables import range_frames, translate
from harness.errors import InfraError
from harness.mem import DictMem

MEM = 64 << 20
PML4 = 0x800000
HVA = 0x7F12_3456_0000                 # where the VMM process maps the VM's first range
BIG = 0x7F12_3480_0000                 # a 2 MiB page of the process (2 MiB aligned)
ALLPROC = KERNBASE + 0x1B00000


def kva(pa: int) -> int:
    return PMAP_DIRECT_BASE + pa


def process_tables(mem: DictMem) -> dict[int, int]:
    """The VMM process's tables: 16 4K pages at HVA, one 2M page at HVA + 2M; hva -> pa."""
    frames = {HVA + i * 0x1000: 0x1000000 + (15 - i) * 0x1000 for i in range(16)}
    specs = [Spec(va, pa, 0x1000, True, True, False) for va, pa in frames.items()
             if va != HVA + 0x5000]                        # one page not resident
    specs.append(Spec(BIG, 0x2000000, 0x200000, True, True, True))
    build(mem, NptEncoder(), PML4, 4, specs)
    del frames[HVA + 0x5000]
    return frames


def test_translate_and_range_frames_follow_the_encoded_tables() -> None:
    mem = DictMem(size=MEM)
    frames = process_tables(mem)
    for va, pa in frames.items():
        assert translate(mem, PML4, va + 0x123) == pa + 0x123
    assert translate(mem, PML4, HVA + 0x5000) is None
    assert translate(mem, PML4, BIG + 0x1345A7) == 0x2000000 + 0x1345A7       # in the 2M page
    got = range_frames(mem, PML4, [(0x0, 0x10000, HVA), (0x100000, 0x4000, BIG + 0x1F0000)])
    want = {i * 0x1000: frames[HVA + i * 0x1000] for i in range(16) if i != 5}
    want.update({0x100000 + i * 0x1000: 0x21F0000 + i * 0x1000 for i in range(4)})
    assert got == want
    with pytest.raises(InfraError, match="not page aligned"):
        range_frames(mem, PML4, [(0x0, 0x1000, HVA + 8)])
    with pytest.raises(InfraError, match="not a user address"):
        translate(mem, PML4, 0xFFFF_8000_0000_0000)


def test_a_failed_table_read_is_an_error_not_an_empty_range() -> None:
    mem = DictMem(size=MEM)
    process_tables(mem)
    with pytest.raises(InfraError):
        translate(mem, MEM + 0x1000, HVA)          # a root outside memory


def proc_types(rename: dict[str, str] | None = None) -> tuple[CtfWriter, dict[str, int]]:
    """struct process / vmspace / vm_map / pmap as OpenBSD declares the members we read."""
    rn = rename or {}
    w = CtfWriter()
    u64 = w.int_("unsigned", 8)
    i32 = w.int_("signed", 4, signed=True)
    proc = w.declare("struct process")
    pmap = w.struct("struct pmap", [("pm_mtx", w.array(u64, 3)), ("pm_pdir", w.ptr(u64)),
                                    ("pm_pdirpa", w.typedef("paddr_t", u64))])
    vm_map = w.struct("struct vm_map", [("pmap", w.typedef("pmap_t", w.ptr(pmap))),
                                        ("lock", w.array(u64, 4))])
    vmspace = w.struct("struct vmspace", [("vm_refcnt", i32), ("vm_map", vm_map)])
    link = w.struct("", [("le_next", w.ptr(proc)), ("le_prev", w.ptr(w.ptr(proc)))])
    w.struct("struct processlist", [("lh_first", w.ptr(proc))])
    ids = {"process": w.struct("struct process", [
        ("ps_mainproc", u64), ("ps_ucred", u64), ("ps_list", link),
        ("ps_threads", w.array(u64, 2)), (rn.get("ps_vmspace", "ps_vmspace"), w.ptr(vmspace)),
        ("ps_pid", w.typedef("pid_t", i32))], define=proc),
        "vmspace": vmspace, "vm_map": vm_map, "pmap": pmap}
    return w, ids


def proc_memory(w: CtfWriter, ids: dict[str, int], pids: list[int], target: int) -> DictMem:
    """allprocess -> one struct process per pid; *target*'s vmspace -> pmap -> PML4."""
    mem = DictMem(size=MEM)
    lay = {k: w.layout_of(v) for k, v in ids.items()}
    procs = [0x300000 + i * 0x1000 for i in range(len(pids))]
    mem.write(ALLPROC - KERNBASE, struct.pack("<Q", kva(procs[0])))
    for i, (pa, pid) in enumerate(zip(procs, pids, strict=True)):
        nxt = kva(procs[i + 1]) if i + 1 < len(procs) else 0
        mem.write(pa + lay["process"]["ps_list"], struct.pack("<Q", nxt))
        mem.write(pa + lay["process"]["ps_pid"], struct.pack("<i", pid))
        vms = 0x400000 + i * 0x1000
        vmspace_member = next(k for k in lay["process"] if k.startswith("ps_vmspace"))
        mem.write(pa + lay["process"][vmspace_member], struct.pack("<Q", kva(vms)))
        pmap = 0x500000 + i * 0x1000
        mem.write(vms + lay["vmspace"]["vm_map"] + lay["vm_map"]["pmap"],
                  struct.pack("<Q", kva(pmap)))
        root = PML4 if pid == target else 0x700000
        mem.write(pmap + lay["pmap"]["pm_pdirpa"], struct.pack("<Q", root))
    process_tables(mem)
    return mem


def test_process_frames_from_the_pid() -> None:
    w, ids = proc_types()
    mem = proc_memory(w, ids, [1, 77, 4242, 9], target=4242)
    syms = {PROC_SYMBOLS[0]: ALLPROC}
    ctf = Ctf.load(w.blob())
    got = process_frames(DirectMapMem(mem), mem, syms, ctf, 4242, [(0x0, 0x4000, HVA)], MEM)
    assert got == {i * 0x1000: 0x1000000 + (15 - i) * 0x1000 for i in range(4)}
    assert process_pmap_root(KernelReader(DirectMapMem(mem), ctf), syms, 77, MEM) == 0x700000
    with pytest.raises(InfraError, match="no process with pid 5 on allprocess"):
        process_frames(DirectMapMem(mem), mem, syms, ctf, 5, [(0, 0x1000, HVA)], MEM)


def test_a_renamed_member_and_a_loop_are_errors() -> None:
    w, ids = proc_types()
    mem = proc_memory(w, ids, [1, 4242], target=4242)
    renamed, _ = proc_types({"ps_vmspace": "ps_vm"})
    with pytest.raises(InfraError, match="has no member 'ps_vmspace'"):
        process_frames(DirectMapMem(mem), mem, {"allprocess": ALLPROC},
                       Ctf.load(renamed.blob()), 4242, [(0, 0x1000, HVA)], MEM)
    lay = w.layout_of(ids["process"])
    mem.write(0x301000 + lay["ps_list"], struct.pack("<Q", kva(0x300000)))   # back to first
    with pytest.raises(InfraError, match="seen twice"):
        process_frames(DirectMapMem(mem), mem, {"allprocess": ALLPROC}, Ctf.load(w.blob()),
                       9999, [(0, 0x1000, HVA)], MEM)
