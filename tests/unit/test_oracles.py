"""The oracles beyond the model, each proven to catch what it is for: freed frames (with
Linux's struct page read through types), pages a VMM process no longer has, table pages of
destroyed VMs, kernel reports on the console; and the rate's interval."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from encoders import NptEncoder, Spec, build

from harness.arch import ARCHES
from harness.errors import InfraError
from harness.formats.npt import NptParams
from harness.formats.npt import walk as walk_npt
from harness.guests.linux_frames import X86_FRAMES, arm64_vmemmap, refcounts_at
from harness.mem import DictMem
from harness.models.base import DictBacking, MemRange, VMDesc
from harness.observe import KernelView, ObservedVM
from harness.oracles import (
    FrameFacts,
    TableHistory,
    absent_backing,
    freed_frames,
    gather,
    report_findings,
    scan_reports,
)
from harness.rates import Rate, wilson
from harness.target import FakeTarget, l1_memories

DATA = Path(__file__).resolve().parents[1] / "data" / "console"
PAGE = 4096
PAGE_SIZE_STRUCT = 64            # sizeof(struct page) of the constructed kernel
REFCOUNT_AT = 52                 # offsetof(struct page, _refcount) of it
COMPOUND_HEAD_AT = 8             # offsetof(struct page, compound_head) of it
VMEMMAP_VA = 0xFFFFEA0000000000
VMEMMAP_PA = 0x800000            # where the struct page array lies in the fake L1


class PageTypes:
    """The constructed kernel's types: just struct page."""

    def offsetof(self, spec: str, path: str) -> int:
        assert spec == "struct page"
        return {"_refcount": REFCOUNT_AT, "compound_head": COMPOUND_HEAD_AT}[path]

    def sizeof(self, spec: Any) -> int:
        assert spec == "struct page"
        return PAGE_SIZE_STRUCT

    def member_type(self, spec: str, path: str) -> Any:
        raise AssertionError("not needed")

    def is_signed(self, spec: Any) -> bool:
        raise AssertionError("not needed")


def world(counts: dict[int, int]) -> tuple[KernelView, ObservedVM]:
    """An L1 with one VM mapping GPA 0x2000 -> 0x300000 and the struct pages of *counts*."""
    mem = DictMem(size=1 << 26)
    build(mem, NptEncoder(kvm=True), 0x10000, 4, [Spec(0x2000, 0x300000, PAGE, True, True,
                                                       True)])
    for frame, n in counts.items():
        mem.write(VMEMMAP_PA + (frame >> 12) * PAGE_SIZE_STRUCT + REFCOUNT_AT,
                  n.to_bytes(4, "little", signed=True))
    mem.write_u64(0x4000, VMEMMAP_VA)                 # the variable vmemmap_base
    virt = {0xFFFFFFFF82000000: 0x4000}
    virt |= {VMEMMAP_VA + k * PAGE: VMEMMAP_PA + k * PAGE for k in range(0x1000)}
    target = FakeTarget(mem, virt=virt)
    view = KernelView(target=target, arch=ARCHES["x86_64"],
                      mem=l1_memories(target, [(0, mem.size)]),
                      symbols={"vmemmap_base": 0xFFFFFFFF82000000}, types=PageTypes())
    params = NptParams(levels=4, flavour="kvm")
    ob = ObservedVM("kvm@1", "npt", 0x10000, params, walk_npt(mem, 0x10000, params))
    return view, ob


def test_a_leaf_over_a_frame_nobody_holds_is_a_freed_frame() -> None:
    view, ob = world({0x300000: 1, 0x10000: 1})
    facts = gather(view, [ob], X86_FRAMES)
    assert facts.refcounts == {0x10000: 1, 0x300000: 1}
    assert freed_frames("w1/vm0", ob, facts) == []
    view, ob = world({0x300000: 0, 0x10000: 1})       # the page went back to the allocator
    (f,) = freed_frames("w1/vm0", ob, gather(view, [ob], X86_FRAMES))
    assert (f.kind, f.gpa, f.observed) == ("freed_frame", 0x2000, 0x300000)


def test_a_frame_reader_that_reads_garbage_fails_its_own_test() -> None:
    view, ob = world({0x300000: 1})                   # the root's struct page reads 0
    with pytest.raises(InfraError, match="fails its own test"):
        gather(view, [ob], X86_FRAMES)
    assert gather(view, [ob], None).unavailable


def test_refcounts_at_reads_struct_page_by_pfn() -> None:
    view, _ = world({0x123000: 7, 0x124000: -1})
    assert refcounts_at(view, VMEMMAP_VA, [0x123000, 0x124000]) == {0x123000: 7, 0x124000: -1}


def test_a_tail_page_of_a_huge_page_counts_with_its_head() -> None:
    """A 4 KiB leaf over part of a THP: the tail's own _refcount is 0 (kvm-npt-huge's
    false freed_frame); compound_head (bit 0 set) leads to the head's count."""
    head = 0x200000
    counts = {head: 3, head + PAGE: 0, head + 2 * PAGE: 0}
    view, _ = world(counts)
    assert refcounts_at(view, VMEMMAP_VA, [head + PAGE]) == {head + PAGE: 0}   # unmarked
    view, _ = world(counts)
    tail_struct = VMEMMAP_PA + ((head + PAGE) >> 12) * PAGE_SIZE_STRUCT
    head_va = VMEMMAP_VA + (head >> 12) * PAGE_SIZE_STRUCT
    view.target.mem.write_u64(tail_struct + COMPOUND_HEAD_AT, head_va | 1)
    counts = refcounts_at(view, VMEMMAP_VA, [head, head + PAGE, head + 2 * PAGE])
    assert counts == {head: 3, head + PAGE: 3, head + 2 * PAGE: 0}   # the unmarked tail: 0


def test_arm64_vmemmap_from_one_linear_map_pair() -> None:
    # arm64, 48-bit VA: PAGE_OFFSET 0xffff000000000000, VMEMMAP_START 0xfffffc0000000000;
    # RAM (memstart_addr) at 0x40000000: pfn 0x40000's struct page is at VMEMMAP_START
    vm = arm64_vmemmap(pgd=0xFFFF000000345000, pgd_phys=0x40345000, page_size=64)
    assert vm + 0x40000 * 64 == 0xFFFFFC0000000000
    shifted = arm64_vmemmap(pgd=0xFFFF000080345000, pgd_phys=0x40345000, page_size=64)
    assert shifted + (0x40000 - 0x80000) * 64 == 0xFFFFFC0000000000   # randomised linear map


def test_a_leaf_over_a_page_the_process_lost_is_stale() -> None:
    _, ob = world({})
    assert absent_backing("w1/vm0", ob, [0x5000]) == []
    (f,) = absent_backing("w1/vm0", ob, [0x2000, 0x3000])
    assert (f.kind, f.gpa, f.observed) == ("stale", 0x2000, 0x300000)


def test_a_destroyed_vms_entry_in_a_live_root_is_a_stale_table() -> None:
    _, ob = world({})
    rng = (MemRange(0, 0x10000),)
    gone_desc = VMDesc("w1/vm0", rng, DictBacking({0x2000: 0x300000}))
    live_desc = VMDesc("w2/vm0", rng, DictBacking({0x2000: 0x700000}))
    h = TableHistory()
    h.seen(("a",), "w1/vm0", ob, gone_desc)
    assert h.findings("w2/vm0", ob, live_desc) == []       # w1 is still live
    h.settle([("b",)])
    (f,) = h.findings("w2/vm0", ob, live_desc)
    assert f.kind == "stale_table" and "w1/vm0" in f.detail
    assert h.findings("w1/vm0", ob, gone_desc) == []        # its own frame: a legitimate reuse
    wrong = TableHistory()
    wrong.seen(("a",), "w1/vm0", ob, live_desc)            # a wrong entry is never remembered
    wrong.settle([])
    assert wrong.findings("w2/vm0", ob, live_desc) == []


def test_kernel_reports_are_found_with_their_first_lines() -> None:
    from harness.guests import GUEST_OSES
    c = GUEST_OSES["linux"].console
    patterns = c.panic + c.warning + c.reports
    text = (DATA / "linux-warning-synthetic.log").read_text()
    ((first, excerpt),) = scan_reports(text, patterns)
    assert "WARNING: CPU: 0 PID: 90" in first and "Modules linked in" in excerpt
    lockdep = ("[  3.1] ======================================================\n"
               "[  3.1] WARNING: possible circular locking dependency detected\n"
               "[  3.1] 6.1.0 #1 Not tainted\n"
               "[  4.0] BUG: KASAN: use-after-free in kvm_mmu_zap_all+0x12/0x40 [kvm]\n"
               "[  4.0] Read of size 8 at addr ffff888004a1b000\n"
               "slat# grep 'BUG: ' /proc/kallsyms\n")
    found = report_findings(lockdep, patterns, "iteration 3 (seed 9)")
    assert [f.observed for f in found] == [
        "[  3.1] WARNING: possible circular locking dependency detected",
        "[  4.0] BUG: KASAN: use-after-free in kvm_mmu_zap_all+0x12/0x40 [kvm]"]
    assert all(f.kind == "kernel_report" and "iteration 3" in f.detail for f in found)
    assert "Read of size 8" in found[1].detail
    quiet = ("slat# uname -r\n6.1.0-28-amd64\n[   2.1] kvm_amd: Nested Paging enabled\n"
             "[   2.2] SVM: kvm: Nested Virtualization enabled\n")
    assert scan_reports(quiet, patterns) == []


def test_wilson_interval_against_published_values() -> None:
    # Wilson score intervals as tabulated by Newcombe (1998), Table I: 0/10, 1/29, 81/263
    assert wilson(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson(1, 29) == pytest.approx((0.0061, 0.1718), abs=1e-4)
    assert wilson(81, 263) == pytest.approx((0.2553, 0.3662), abs=1e-4)
    r = Rate.of(0, 0, None, 0.0)
    assert r.rate == 0.0 and (r.low, r.high) == (0.0, 1.0)


def test_frame_facts_without_a_reader_judge_nothing() -> None:
    _, ob = world({})
    assert freed_frames("x", ob, FrameFacts(unavailable="no reader")) == []


def test_arm64_vmemmap_of_the_reorganised_va_space() -> None:
    """Linux 6.9 on: VMEMMAP_END = -1 GiB, sized for PAGE_OFFSET .. _PAGE_END(48).  For a
    52-bit build with 64-byte struct pages VMEMMAP_START is 2^64 - 2^30 - 2^46 + 2^41;
    RAM at 1 GiB (pfn 0x40000) is the array's first entry when 52 bits are in use, and
    15 * 2^36 entries further (the linear map's offset) when the CPU falls back to 48."""
    start = 0xFFFFC1FFC0000000
    lpa2 = arm64_vmemmap(pgd=0xFFF0000001234000, pgd_phys=0x41234000, page_size=64,
                         va_bits=52, top=True)
    assert lpa2 + 0x40000 * 64 == start
    fallback = arm64_vmemmap(pgd=0xFFFF000001234000, pgd_phys=0x41234000, page_size=64,
                             va_bits=52, top=True)
    assert fallback + 0x40000 * 64 == start + (0xF << 36) * 64
    old = arm64_vmemmap(pgd=0xFFFF000001234000, pgd_phys=0x41234000, page_size=64)
    assert old + 0x40000 * 64 == 0xFFFFFC0000000000          # 6.1: -(1 << 42)


def test_a_kernel_without_a_dynamic_layout_uses_the_fixed_vmemmap() -> None:
    """No CONFIG_RANDOMIZE_MEMORY nor X86_5LEVEL (a small custom kernel): no vmemmap_base
    variable, the array is at 0xffffea0000000000 (what the constructed L1 uses too)."""
    from dataclasses import replace

    from harness.discovery.linux_kvm_common import STATIC_VMEMMAP, x86_layout_base
    assert STATIC_VMEMMAP == VMEMMAP_VA
    view, ob = world({0x300000: 0, 0x10000: 1})
    view = replace(view, symbols={})
    (f,) = freed_frames("w1/vm0", ob, gather(view, [ob], X86_FRAMES))
    assert (f.kind, f.observed) == ("freed_frame", 0x300000)
    mem = view.mem.kernel
    assert x86_layout_base(mem, {"vmemmap_base": 0xFFFFFFFF82000000}, "vmemmap_base", 0) \
        == VMEMMAP_VA                                # the variable, when there is one
