"""VMCB control area: signature, scan, BTF/APM agreement, vmrun! log, paging depth."""

from __future__ import annotations

import pytest
from test_btf import BtfBuilder

from harness.btf import Btf
from harness.discovery.vmcb import (
    VmcbControl,
    control_offsets,
    paging_levels,
    parse_vmrun_log,
    scan_vmcbs,
    signature_failures,
)
from harness.errors import InfraError
from harness.mem import DictMem

MEM = 64 << 20

# (offset, size) per AMD APM Vol. 2 Appendix B, written independently of vmcb.py
APM = {"intercepts": (0x000, 4), "iopm_base_pa": (0x040, 8), "msrpm_base_pa": (0x048, 8),
       "asid": (0x058, 4), "nested_ctl": (0x090, 8), "nested_cr3": (0x0B0, 8)}


def vmcb_page(ncr3: int = 0x123000, asid: int = 1, nested_ctl: int = 1,
              vmrun: bool = True, iopm: int = 0x200000, msrpm: int = 0x300000) -> bytes:
    """A 4 KiB VMCB as KVM's init_vmcb()/load_mmu_pgd leave it, other fields noise."""
    page = bytearray(b"\xa5" * 4096)
    for name, val in (("iopm_base_pa", iopm), ("msrpm_base_pa", msrpm), ("asid", asid),
                      ("nested_ctl", nested_ctl), ("nested_cr3", ncr3)):
        off, size = APM[name]
        page[off:off + size] = val.to_bytes(size, "little")
    page[0x10:0x14] = (0xFFFF0001 if vmrun else 0xFFFF0000).to_bytes(4, "little")
    return bytes(page)


def test_good_vmcb_passes_and_fields_decode() -> None:
    c = VmcbControl.parse(vmcb_page(ncr3=0x5000, asid=7))
    assert (c.nested_cr3, c.asid, c.nested_ctl, c.intercept_vmrun) == (0x5000, 7, 1, True)
    assert signature_failures(c, MEM) == []


@pytest.mark.parametrize("corrupt, reason", [
    ({"nested_ctl": 0}, "nested_ctl"),
    ({"nested_ctl": 3}, "nested_ctl"),            # SEV: not the plain NPT case
    ({"ncr3": 0}, "nCR3"),
    ({"ncr3": 0x123008}, "nCR3"),
    ({"ncr3": MEM}, "nCR3"),
    ({"vmrun": False}, "VMRUN"),
    ({"asid": 0}, "ASID"),
    ({"asid": 0x10000}, "ASID"),
    ({"iopm": 0}, "IOPM"),
    ({"msrpm": 0x300010}, "MSRPM"),
])
def test_each_signature_rule_catches_its_corruption(corrupt: dict[str, int],
                                                    reason: str) -> None:
    fails = signature_failures(VmcbControl.parse(vmcb_page(**corrupt)), MEM)
    assert len(fails) == 1 and reason in fails[0]


def _memory(layout: dict[int, bytes]) -> DictMem:
    mem = DictMem(size=MEM)
    for pa, page in layout.items():
        mem.write(pa, page)
    return mem


def test_scan_finds_vmcbs_in_a_dump_and_through_a_reader() -> None:
    layout = {0x10000: vmcb_page(ncr3=0x40000), 0x2F000: vmcb_page(ncr3=0x41000, asid=2),
              0x30000: vmcb_page(nested_ctl=0), 0x3000000: vmcb_page(ncr3=0x42000, asid=3)}
    mem = _memory(layout)
    dump = mem.read(0, MEM)
    found = [(c.pa, c.control.nested_cr3) for c in scan_vmcbs(dump, MEM)]
    assert found == [(0x10000, 0x40000), (0x2F000, 0x41000), (0x3000000, 0x42000)]
    assert [c.pa for c in scan_vmcbs(mem, MEM, chunk=1 << 16)] == [p for p, _ in found]


def test_scan_reader_failure_raises() -> None:
    with pytest.raises(InfraError):
        scan_vmcbs(DictMem(size=1 << 20), 2 << 20)


def _control_area_btf(shift_asid: int = 0) -> Btf:
    b = BtfBuilder()
    u32, u64, u8 = b.int_("u32", 4), b.int_("u64", 8), b.int_("u8", 1)
    intercepts = b.array(u32, 6, u32)
    pad = b.array(u8, 0x3C, u32)
    members = [("intercepts", intercepts, 0), ("reserved_1", pad, 0x18 * 8),
               ("iopm_base_pa", u64, 0x40 * 8), ("msrpm_base_pa", u64, 0x48 * 8),
               ("asid", u32, (0x58 + shift_asid) * 8), ("nested_ctl", u64, 0x90 * 8),
               ("nested_cr3", u64, 0xB0 * 8)]
    b.struct("vmcb_control_area", 0x400, members)
    return Btf.load(b.encode())


def test_control_offsets_from_btf_agree_with_the_apm() -> None:
    assert control_offsets(_control_area_btf()) == APM
    assert control_offsets(None) == APM


def test_control_offsets_disagreement_raises_with_both_values() -> None:
    with pytest.raises(InfraError, match=r"asid.*0x5c.*APM says 0x58"):
        control_offsets(_control_area_btf(shift_asid=4))


def test_parse_vmrun_log_keeps_order_and_ignores_other_lines() -> None:
    log = ("vmrun! 0000000003c2e000\nvmexit(0000000000000078, 0000000000000000, ...)\n"
           "Trace 0: 0x7f -> garbage\nvmrun! 0x4000\nvmrun! 0000000003c2e000\n")
    assert parse_vmrun_log(log) == [0x3C2E000, 0x4000, 0x3C2E000]
    assert parse_vmrun_log("") == []


def test_paging_levels_reads_la57() -> None:
    assert paging_levels(1 << 12) == 5
    assert paging_levels(0x3506F0) == 4
    assert paging_levels(0x3506F0 | 1 << 12) == 5
