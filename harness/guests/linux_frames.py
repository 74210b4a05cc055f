"""Linux's count of references to a physical frame: ``struct page._refcount``.

A tail page of a compound page (a THP or hugetlb page, which a 4 KiB nested leaf may
map a part of) has no count of its own: its ``compound_head`` word holds the head's
``struct page`` address with bit 0 set, and the head's count speaks for it
(``page_ref_count(compound_head(page))``, as ``get_page`` takes it).

The ``struct page`` of frame *pfn* is ``vmemmap + pfn`` (``CONFIG_SPARSEMEM_VMEMMAP``),
read through the kernel's own types (BTF: ``sizeof(struct page)``, the offset of
``_refcount``).  Where the array starts:

* x86-64: ``vmemmap_base`` (a variable, randomised with KASLR; in kallsyms), or the
  fixed 0xffffea0000000000 of a kernel without a dynamic layout (no
  ``CONFIG_RANDOMIZE_MEMORY``, no ``CONFIG_X86_5LEVEL``: no such variable);
* arm64: ``VMEMMAP_START - (memstart_addr >> PAGE_SHIFT)`` with ``VMEMMAP_START =
  -(1 << (VA_BITS - 6))`` (48-bit VA, 64-byte ``struct page``: 0xfffffc0000000000) and
  ``PAGE_OFFSET = -(1 << VA_BITS)``; ``memstart_addr`` is not in Debian's kallsyms
  (no data symbols), so it is derived from one known linear-map address and its
  physical address: a stage-2 root (``pgt->pgd`` and ``pgd_phys``, which discovery
  already cross-checked).  ``VA_BITS`` is the kernel's ``CONFIG_ARM64_VA_BITS`` (the
  fact of that name, from the image's configuration; 48 when unknown): Debian's 6.12
  kernels are built for 52 (``VMEMMAP_START`` 0xffffc00000000000), and a kernel built
  for 52 that runs with 48 (no LPA2) moves ``memstart_addr``, not ``VMEMMAP_START``.
  From Linux 6.9 the region sits 1 GiB below the top instead (``VMEMMAP_END =
  -SZ_1G``, sized for the linear map from ``PAGE_OFFSET`` to ``_PAGE_END(48)``); the
  version comes from the image's kernel release.  (Verified on 6.1 and 6.12 only.)

:func:`harness.oracles.gather` tests the reader on every VM's root table page before
it judges anything.

>>> arm64_vmemmap(pgd=0xffff000001234000, pgd_phys=0x41234000, page_size=64) - \\
...     (0xfffffc0000000000 - (0x40000000 >> 12) * 64)
0
"""

from __future__ import annotations

from collections.abc import Sequence

from harness.discovery.linux_kvm_common import STATIC_VMEMMAP, x86_layout_base
from harness.errors import InfraError
from harness.mem import read_u64
from harness.observe import KernelView, ObservedVM
from harness.oracles import FrameRefs

__all__ = ["X86_FRAMES", "ARM64_FRAMES", "refcounts_at", "arm64_vmemmap"]

PAGE_SHIFT = 12
ARM64_VA_BITS = 48                  # Debian's 6.1 arm64 kernels: CONFIG_ARM64_VA_BITS_48
STRUCT_PAGE_MAX_SHIFT = 6           # VMEMMAP_SHIFT = PAGE_SHIFT - STRUCT_PAGE_MAX_SHIFT
MASK64 = (1 << 64) - 1
TOP_VMEMMAP_FROM = 0x060900         # LINUX_VERSION_CODE of the reorganised kernel VA space


def refcounts_at(view: KernelView, vmemmap: int, frames: Sequence[int]) -> dict[int, int]:
    """``page_ref_count(compound_head(pfn_to_page(frame >> 12)))`` of each frame."""
    size = view.types.sizeof("struct page")
    off = view.types.offsetof("struct page", "_refcount")
    head_off = view.types.offsetof("struct page", "compound_head")
    out = {}
    for frame in frames:
        page = (vmemmap + (frame >> PAGE_SHIFT) * size) & MASK64
        head = read_u64(view.mem.kernel, page + head_off)
        if head & 1:                                      # a tail page: its head's count
            page = head - 1
        raw = view.mem.kernel.read((page + off) & MASK64, 4)
        out[frame] = int.from_bytes(raw, "little", signed=True)
    return out


def _x86_read(view: KernelView, vms: Sequence[ObservedVM],
              frames: Sequence[int]) -> dict[int, int]:
    base = x86_layout_base(view.mem.kernel, view.symbols, "vmemmap_base", STATIC_VMEMMAP)
    return refcounts_at(view, base, frames)


def arm64_vmemmap(pgd: int, pgd_phys: int, page_size: int,
                  va_bits: int = ARM64_VA_BITS, top: bool = False) -> int:
    """Where arm64's ``struct page`` array would hold pfn 0, from one linear-map pair.

    *top*: the vmemmap region ends 1 GiB below the top of the address space and is
    as large as the linear map needs (Linux 6.9 on, :data:`TOP_VMEMMAP_FROM`); before,
    it starts at ``-(1 << (VA_BITS - 6))``.
    """
    page_offset = -(1 << va_bits) & MASK64
    memstart = pgd_phys - (pgd - page_offset)
    if top:
        va_bits_min = min(va_bits, 48)
        page_end = -(1 << (va_bits_min - 1)) & MASK64
        start = -(1 << 30) - ((page_end - page_offset) >> PAGE_SHIFT) * page_size
    else:
        start = -(1 << (va_bits - (PAGE_SHIFT - STRUCT_PAGE_MAX_SHIFT)))
    return (start - (memstart >> PAGE_SHIFT) * page_size) & MASK64


def _arm64_read(view: KernelView, vms: Sequence[ObservedVM],
                frames: Sequence[int]) -> dict[int, int]:
    s2 = next((ob.discovery.get("stage2") for ob in vms if ob.discovery.get("stage2")), None)
    if s2 is None:
        raise InfraError("arm64 frame reader: no stage-2 root to derive memstart_addr from")
    version = view.facts.get("LINUX_VERSION_CODE", 0)
    vmemmap = arm64_vmemmap(int(s2["pgd"], 16), int(s2["pgd_phys"], 16),
                            view.types.sizeof("struct page"),
                            view.facts.get("CONFIG_ARM64_VA_BITS", ARM64_VA_BITS),
                            top=version >= TOP_VMEMMAP_FROM)
    return refcounts_at(view, vmemmap, frames)


X86_FRAMES = FrameRefs("Linux x86-64 struct page._refcount at vmemmap_base", _x86_read,
                       symbols=("vmemmap_base",))
ARM64_FRAMES = FrameRefs("Linux arm64 struct page._refcount at VMEMMAP_START - memstart_addr",
                         _arm64_read)
