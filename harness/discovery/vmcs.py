"""Intel VMCS regions in L1 memory: where a CPU keeps a field, and the EPT pointer.

The layout of a VMCS region is the CPU's business (Intel SDM vol. 3C, "Format
of the VMCS region": only the revision identifier at offset 0 and the abort
indicator at 4 are architectural), so a field can be read from memory only
for a CPU whose layout is known.  :data:`VMCS_LAYOUTS` maps the revision
identifier to the layout; a VMCS of another revision is reported as "layout
not known" and nothing is read from it.

Bochs 2.7 (``cpu/vmcs.cc``, ``init_generic_mapping``): revision 0x2B
(``BX_VMX_VMCS_REVISION_ID``), data from offset 0x10 (``VMCS_DATA_OFFSET``),
4 bytes per field, 64 fields per (width, type) group::

    offset(encoding) = 0x10 + (((width << 2) + type) * 64 + index) * 4
    width = encoding[14:13], type = encoding[11:10], index = encoding[9:0]

A 64-bit field is two such fields, the full encoding (low half) then
encoding + 1 (high half), so its 8 bytes are contiguous.  The EPT pointer
(encoding 0x201A) lies at 0x478:

>>> hex(bochs_field_offset(VMCS_EPT_POINTER))
'0x478'

A VMCS region *candidate* (:func:`scan_vmcss`) has a known revision and an
EPT pointer that names a page below the RAM size with write-back memory type
and a 4- or 5-level walk: the pages KVM's live vCPUs use, and those that
closed VMs left behind.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from harness.formats.ept import decode_eptp
from harness.mem import PAGE_SIZE, PhysMem

__all__ = ["VmcsLayout", "VMCS_LAYOUTS", "BOCHS_VMCS", "VMCS_EPT_POINTER", "VmcsCandidate",
           "bochs_field_offset", "vmcs_revision", "read_field", "eptp_failures", "scan_vmcss",
           "REVISION_MASK", "VMX_EPTP_MT_WB", "parse_ept_violation_log"]

VMCS_EPT_POINTER = 0x201A           # VMCS_64BIT_CONTROL_EPTPTR (SDM appendix B.2.1)
REVISION_MASK = 0x7FFF_FFFF         # bit 31 of the first word: shadow-VMCS indicator
VMX_EPTP_MT_WB = 6
EPT_VIOLATION_LINE = re.compile(r"VMEXIT: EPT violation for guest paddr 0x([0-9a-fA-F]+)")


def bochs_field_offset(encoding: int) -> int:
    """Byte offset of VMCS field *encoding* in a Bochs 2.7 VMCS region."""
    width, ftype, index = (encoding >> 13) & 3, (encoding >> 10) & 3, encoding & 0x3FF
    return 0x10 + (((width << 2) + ftype) * 64 + index) * 4


@dataclass(frozen=True)
class VmcsLayout:
    """Where one CPU implementation keeps VMCS fields in the region."""

    name: str
    revision_id: int                        # u32 at offset 0, bit 31 clear
    offset: Callable[[int], int]            # field encoding -> byte offset


BOCHS_VMCS = VmcsLayout("bochs-2.7", 0x2B, bochs_field_offset)
VMCS_LAYOUTS: dict[int, VmcsLayout] = {BOCHS_VMCS.revision_id: BOCHS_VMCS}


def vmcs_revision(region: bytes) -> int:
    """The revision identifier of a VMCS region (shadow indicator masked)."""
    return int.from_bytes(region[:4], "little") & REVISION_MASK


def read_field(region: bytes, layout: VmcsLayout, encoding: int, size: int = 8) -> int:
    """A field of a VMCS region (*size* bytes: 8 for 64-bit fields)."""
    off = layout.offset(encoding)
    return int.from_bytes(region[off:off + size], "little")


def eptp_failures(eptp: int, mem_size: int) -> list[str]:
    """Why *eptp* is not an EPT pointer KVM would load (empty: it looks like one)."""
    root, levels, memtype, _ad = decode_eptp(eptp)
    fails = []
    if memtype != VMX_EPTP_MT_WB:
        fails.append(f"memory type {memtype}, not WB")
    if levels not in (4, 5):
        fails.append(f"page-walk length {levels}")
    if not root or root >= mem_size:
        fails.append(f"root {root:#x} not a page below {mem_size:#x}")
    if eptp & 0xF80:
        fails.append(f"reserved bits {eptp & 0xF80:#x}")
    return fails


@dataclass(frozen=True)
class VmcsCandidate:
    """A page that looks like a VMCS region KVM used (maybe of a closed VM)."""

    pa: int
    layout: str
    eptp: int


def _pages(mem: PhysMem, mem_size: int, chunk: int) -> Iterator[tuple[int, bytes]]:
    for base in range(0, mem_size, chunk):
        block = mem.read(base, min(chunk, mem_size - base))
        for off in range(0, len(block) - PAGE_SIZE + 1, PAGE_SIZE):
            yield base + off, block[off:off + PAGE_SIZE]


def scan_vmcss(mem: PhysMem, mem_size: int, *, start: int = 0, chunk: int = 1 << 20,
               layouts: dict[int, VmcsLayout] = VMCS_LAYOUTS) -> list[VmcsCandidate]:
    """Every page from *start* to *mem_size* of a known VMCS revision with a sane EPTP.

    Evidence, not a list of VMs: VMCS pages of closed VMs linger in memory.
    """
    out = []
    for pa, page in _pages(_Offset(mem, start), mem_size - start, chunk):
        layout = layouts.get(vmcs_revision(page))
        if layout is None or int.from_bytes(page[:4], "little") >> 31:
            continue
        eptp = read_field(page, layout, VMCS_EPT_POINTER)
        if eptp and not eptp_failures(eptp, mem_size):
            out.append(VmcsCandidate(start + pa, layout.name, eptp))
    return out


class _Offset:
    """A PhysMem seen from *base* on."""

    def __init__(self, mem: PhysMem, base: int) -> None:
        self.mem, self.base = mem, base

    def read(self, addr: int, size: int) -> bytes:
        return self.mem.read(self.base + addr, size)


def parse_ept_violation_log(text: str) -> list[int]:
    """Guest-physical addresses of Bochs's EPT violations, in log order.

    Bochs 2.7 (``cpu/paging.cc``, ``translate_guest_physical``) logs every EPT
    violation an L2 access causes, whatever the VM:

    >>> parse_ept_violation_log("111244506657e[CPU0  ] VMEXIT: EPT violation for guest "
    ...                         "paddr 0x000000002000 laddr 0x0000000000002000\\n")
    [8192]
    """
    return [int(m.group(1), 16) for m in EPT_VIOLATION_LINE.finditer(text)]
