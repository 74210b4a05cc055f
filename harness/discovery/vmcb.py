"""The AMD SVM VMCB control area: offsets, the page signature, QEMU's vmrun! log.

Offsets are architectural (AMD APM Vol. 2, Appendix B, "Layout of VMCB");
:func:`control_offsets` takes them from the kernel's BTF ``struct
vmcb_control_area`` when it is there and raises if the two disagree.

A page is a VMCB *candidate* when it looks like one KVM ran with nested paging
(the scan of docs ENVIRONMENT.md "Finding the nested root"):

* nested_ctl (u64 at 0x90) is exactly 1 (NP_ENABLE, no SEV);
* nCR3 (u64 at 0xB0) is non-zero, 4 KiB aligned and below the RAM size;
* the VMRUN intercept (bit 0 of the u32 at 0x10) is set;
* ASID (u32 at 0x58) is 1..65535;
* IOPM_BASE_PA / MSRPM_BASE_PA (u64 at 0x40 / 0x48) are non-zero and page aligned.

>>> page = bytearray(4096)
>>> for off, val, n in ((0x90, 1, 8), (0xB0, 0x5000, 8), (0x10, 1, 4), (0x58, 1, 4),
...                     (0x40, 0x3000, 8), (0x48, 0x4000, 8)):
...     page[off:off + n] = val.to_bytes(n, "little")
>>> signature_failures(VmcbControl.parse(bytes(page)), mem_size=1 << 30)
[]
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

from harness.errors import InfraError
from harness.ktypes import KernelTypes, TypeLookupError
from harness.mem import PAGE_SIZE, PhysMem

__all__ = ["VMCB_CONTROL", "VmcbControl", "VmcbCandidate", "control_offsets",
           "signature_failures", "scan_vmcbs", "parse_vmrun_log", "paging_levels",
           "NCR3_ADDR_MASK", "NP_ENABLE", "INTERCEPT_VMRUN_WORD", "CR4_LA57"]

# field -> (offset, size) in the control area, per AMD APM Appendix B and
# Linux's struct vmcb_control_area member names
VMCB_CONTROL: dict[str, tuple[int, int]] = {
    "intercepts": (0x000, 4),       # u32 intercept vectors; word 4 holds VMRUN
    "iopm_base_pa": (0x040, 8),
    "msrpm_base_pa": (0x048, 8),
    "asid": (0x058, 4),
    "nested_ctl": (0x090, 8),       # bit 0 NP_ENABLE, bit 1 SEV, bit 2 SEV-ES
    "nested_cr3": (0x0B0, 8),
}
CONTROL_AREA_SIZE = 0x400
INTERCEPT_VMRUN_WORD = 4           # INTERCEPT_VMRUN = 4 * 32 + 0 (word 4 = byte 0x10, bit 0)
NP_ENABLE = 1
NCR3_ADDR_MASK = 0x000F_FFFF_FFFF_F000   # bits 51:12; the SME C-bit lies inside
CR4_LA57 = 1 << 12
MAX_ASID = 0xFFFF
VMRUN_LINE = re.compile(r"vmrun!\s+(?:0x)?([0-9a-fA-F]+)")


@dataclass(frozen=True)
class VmcbControl:
    """The control-area fields slatcheck looks at."""

    intercept_vmrun: bool
    iopm_base_pa: int
    msrpm_base_pa: int
    asid: int
    nested_ctl: int
    nested_cr3: int

    @classmethod
    def parse(cls, area: bytes, offsets: dict[str, tuple[int, int]] = VMCB_CONTROL
              ) -> VmcbControl:
        """Decode the first 0x400 bytes of a VMCB (or more; the rest is ignored)."""
        def field(name: str, index: int = 0) -> int:
            off, size = offsets[name]
            start = off + index * size
            return int.from_bytes(area[start:start + size], "little")

        return cls(intercept_vmrun=bool(field("intercepts", INTERCEPT_VMRUN_WORD) & 1),
                   iopm_base_pa=field("iopm_base_pa"), msrpm_base_pa=field("msrpm_base_pa"),
                   asid=field("asid"), nested_ctl=field("nested_ctl"),
                   nested_cr3=field("nested_cr3"))


@dataclass(frozen=True)
class VmcbCandidate:
    """A page of L1 memory that passes the VMCB signature (maybe of a dead VM)."""

    pa: int
    control: VmcbControl


def control_offsets(btf: KernelTypes | None) -> dict[str, tuple[int, int]]:
    """VMCB control offsets from BTF when available; raises if BTF disagrees with the APM."""
    if btf is None:
        return dict(VMCB_CONTROL)
    try:
        btf.sizeof("struct vmcb_control_area")
    except TypeLookupError:
        return dict(VMCB_CONTROL)
    out = {}
    for name, (apm_off, apm_size) in VMCB_CONTROL.items():
        off = btf.offsetof("struct vmcb_control_area", name)
        mtype = btf.member_type("struct vmcb_control_area", name)
        size = btf.sizeof(mtype) if name != "intercepts" else \
            btf.sizeof(btf.member_type("struct vmcb_control_area", "intercepts[0]"))
        if (off, size) != (apm_off, apm_size):
            raise InfraError(f"struct vmcb_control_area.{name}: the kernel's BTF says offset "
                             f"{off:#x} size {size}, the AMD APM says {apm_off:#x} size "
                             f"{apm_size}")
        out[name] = (off, size)
    return out


def signature_failures(c: VmcbControl, mem_size: int) -> list[str]:
    """The signature rules *c* breaks (empty: it looks like a live NPT VMCB)."""
    fails = []
    if c.nested_ctl != NP_ENABLE:
        fails.append(f"nested_ctl {c.nested_ctl:#x} != NP_ENABLE")
    if not c.nested_cr3 or c.nested_cr3 % PAGE_SIZE or c.nested_cr3 >= mem_size:
        fails.append(f"nCR3 {c.nested_cr3:#x} not a page below {mem_size:#x}")
    if not c.intercept_vmrun:
        fails.append("VMRUN intercept clear")
    if not 1 <= c.asid <= MAX_ASID:
        fails.append(f"ASID {c.asid} outside 1..{MAX_ASID}")
    for name, pa in (("IOPM_BASE_PA", c.iopm_base_pa), ("MSRPM_BASE_PA", c.msrpm_base_pa)):
        if not pa or pa % PAGE_SIZE:
            fails.append(f"{name} {pa:#x} zero or unaligned")
    return fails


def _pages(mem: bytes | bytearray | memoryview | PhysMem, mem_size: int,
           chunk: int) -> Iterator[tuple[int, memoryview]]:
    """(pa, page) for every page below *mem_size*, read *chunk* bytes at a time."""
    if isinstance(mem, bytes | bytearray | memoryview):
        view = memoryview(mem)[:mem_size]
        for pa in range(0, len(view) - PAGE_SIZE + 1, PAGE_SIZE):
            yield pa, view[pa:pa + PAGE_SIZE]
        return
    for base in range(0, mem_size, chunk):
        block = memoryview(mem.read(base, min(chunk, mem_size - base)))
        for off in range(0, len(block) - PAGE_SIZE + 1, PAGE_SIZE):
            yield base + off, block[off:off + PAGE_SIZE]


def scan_vmcbs(mem: bytes | bytearray | memoryview | PhysMem, mem_size: int,
               chunk: int = 1 << 20) -> list[VmcbCandidate]:
    """Every page of L1 memory passing the VMCB signature, live or stale.

    *mem* is a whole memory dump (QMP ``pmemsave``) or a physical reader.  The
    result includes VMCBs of closed VMs: it is evidence, not a list of VMs.
    """
    out = []
    np_off = VMCB_CONTROL["nested_ctl"][0]
    for pa, page in _pages(mem, mem_size, chunk):
        if int.from_bytes(page[np_off:np_off + 8], "little") != NP_ENABLE:
            continue     # the fast reject: almost no page has exactly 1 there
        control = VmcbControl.parse(bytes(page[:CONTROL_AREA_SIZE]))
        if not signature_failures(control, mem_size):
            out.append(VmcbCandidate(pa, control))
    return out


def parse_vmrun_log(text: str) -> list[int]:
    """VMCB physical addresses of QEMU's ``vmrun! <addr>`` log lines, in log order.

    >>> parse_vmrun_log("vmrun! 0000000003c2e000\\nvmexit(...)\\nvmrun! 3c2e000\\n")
    [63102976, 63102976]
    """
    return [int(m.group(1), 16) for m in VMRUN_LINE.finditer(text)]


def paging_levels(cr4: int) -> int:
    """4 or 5: the x86-64 paging depth of L1 (CR4.LA57, bit 12), which KVM uses for NPT.

    >>> paging_levels(0x3506f0), paging_levels(0x3516f0)
    (4, 5)
    """
    return 5 if cr4 & CR4_LA57 else 4
