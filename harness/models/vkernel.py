"""Reference model ``dragonfly-vkernel``: the host pmap of one VPAGETABLE region.

A DragonFly vkernel maps its memory image ``MAP_VPAGETABLE`` and keeps page
tables (VPTEs) inside that image; the host kernel fills its own pmap lazily
from them in ``vm_fault_vpagetable()`` (``sys/vm/vm_fault.c``).  Invalidation
is cooperative: when the vkernel changes a VPTE it must call
``madvise(MADV_INVAL)`` / ``vmspace_mcontrol(MADV_INVAL)`` so that the host
drops its PTEs.  This model judges the host PTEs of the region (observed
with an x86-64 walk of the vkernel process's pmap) against the VPTEs in the
image.

Input (:class:`~harness.models.base.VMDesc`):

* ``ranges``: exactly one :class:`MemRange`, the map entry (``gpa`` = its
  start VA, ``size`` = its length, ``prot`` = its protection, which caps the
  host PTEs); listed in ``removed`` once unmapped;
* ``backing.resolve(rng, image_offset)``: the L1 physical page holding the
  image object's page at that byte offset (None = not resident: not judged);
  :class:`~harness.formats.vpte.ObjectImage` serves as both image and backing;
* ``options`` (:class:`VkernelOptions`): the image reader, the master PDE,
  the VPTE layout;
* ``touched``: VAs the scenario says the vkernel accessed (usually none).

Rules for every 4 KiB page ``va`` of a host leaf:

* outside the region: ``unexpected`` (inside a removed region or after the
  vkernel exited: ``leftover``);
* no valid VPTE path for ``va``: ``stale`` (a VPTE changed, MADV_INVAL skipped);
* the frame is not the host page of the image page the VPTE walk gives:
  ``wrong_frame``;
* writable although a VPTE on the path lacks VPTE_RW or the final VPTE lacks
  VPTE_M (the host maps read-only until VPTE_M is set), executable under
  VPTE_NX (old layout: without VPTE_X), readable without VPTE_R (old layout):
  ``permission``.  Note that DragonFly's read-fault path only tests the final
  VPTE for RW|M, so a writable host PTE under a non-RW intermediate VPTE is
  reported here although that kernel could produce it.

Per leaf: these rules are caps that each page's own VPTE path sets, not grants a fault
made, so they are judged on every 4 KiB page of a host leaf, whatever its size.  A
host leaf is one page in practice: ``vm_fault()`` translates one page index through
``vm_fault_vpagetable()`` and enters that one page (``pmap_enter(fs.map->pmap, vaddr,
fs.m, fs.prot, ...)``, sys/vm/vm_fault.c); a larger host leaf is still correct only if
every page it covers allows what it grants.
"""

from __future__ import annotations

from dataclasses import dataclass

from harness.errors import ScenarioError
from harness.findings import NOT_PRESENT, Finding
from harness.formats.base import Mapping, WalkLimits
from harness.formats.vpte import VPTEParams, VPTEPerms, layout_of, translate
from harness.mem import PhysMem
from harness.models.base import (
    PAGE_SIZE,
    Expectation,
    ExpectedPage,
    MemRange,
    Model,
    VMDesc,
    frame_findings,
    leftover_finding,
    options_of,
    outside_finding,
    page_accesses,
    permission_findings,
    segments,
)

__all__ = ["VkernelOptions", "allowed", "expect", "DRAGONFLY_VKERNEL"]


@dataclass(frozen=True)
class VkernelOptions:
    """``VMDesc.options`` understood by ``dragonfly-vkernel``."""

    image: PhysMem | None = None    # reader of the memory image (offset 0 = object page 0)
    master_pde: int | None = None   # entry->aux.master_pde (the MADV_SETMAP value)
    layout: str = "x86"             # VPTE layout: "x86" (current) or "old"
    nx_bit: int | None = 63         # VPTE_NX bit of the x86 layout [M]
    image_size: int | None = None   # bytes in the image; None = ``image.size`` if it has one


@dataclass(frozen=True)
class _Region:
    """One VPAGETABLE map entry, resolved from the VMDesc."""

    rng: MemRange
    image: PhysMem
    master_pde: int
    params: VPTEParams

    def translate(self, va: int) -> tuple[int, VPTEPerms] | None:
        """The image offset and VPTE grant of *va*, or None."""
        return translate(self.image, self.master_pde, va, self.params)


def _region(vm: VMDesc) -> _Region:
    """Check the options and the single range; ScenarioError if they are unusable."""
    o = options_of(vm, VkernelOptions)
    if o.image is None or o.master_pde is None:
        raise ScenarioError("dragonfly-vkernel needs options 'image' and 'master_pde'",
                            field="options")
    if len(vm.ranges) != 1:
        raise ScenarioError(f"dragonfly-vkernel judges one VPAGETABLE region, got "
                            f"{len(vm.ranges)} ranges", field="ranges")
    rng = vm.ranges[0]
    size = o.image_size if o.image_size is not None else getattr(o.image, "size", None)
    params = VPTEParams(layout=o.layout, nx_bit=o.nx_bit, base=rng.gpa, size=rng.size,
                        limits=WalkLimits(mem_size=size))
    layout_of(params)       # an unknown layout or a bad NX bit fails here, not mid-check
    return _Region(rng, o.image, o.master_pde, params)


def allowed(perms: VPTEPerms, prot: str = "rwx") -> dict[str, bool]:
    """What a host PTE may grant under a VPTE path: r, w (RW path and M), x.

    *prot* is the map entry's protection, which caps all three.

    >>> allowed(VPTEPerms(r=True, w=True, x=False, m=False))
    {'r': True, 'w': False, 'x': False}
    """
    grant = {"r": perms.r, "w": perms.w and perms.m, "x": perms.x}
    return {k: ok and k in prot for k, ok in grant.items()}


def _page_findings(vm: VMDesc, reg: _Region, page: int, m: Mapping) -> list[Finding]:
    """Findings for one 4 KiB page of a host leaf inside the region."""
    hpa = m.hpa + (page - m.gpa)
    t = reg.translate(page)
    if t is None:
        return [Finding("stale", vm.name, page, expected=NOT_PRESENT, observed=hpa,
                        detail=f"host pte {m.raw:#x} without a valid VPTE path")]
    off, perms = t
    detail = f"vpte {perms.vpte:#x} image {off:#x} host pte {m.raw:#x}"
    want = {k: False for k, ok in allowed(perms, reg.rng.prot).items() if not ok}
    return (frame_findings(vm.name, page, vm.backing.resolve(reg.rng, off), hpa, detail)
            + permission_findings(vm.name, page, m, want, detail))


def _check_leaf(vm: VMDesc, reg: _Region, m: Mapping) -> list[Finding]:
    """Every finding for one observed host leaf."""
    if vm.torn_down:
        return [leftover_finding(vm, m, "after the vkernel exited")]
    out: list[Finding] = []
    for start, end, rng in segments(vm, m.gpa, m.end):
        if rng is None or rng.gpa in vm.removed:
            out.append(outside_finding(vm, start, end, rng, m))
            continue
        for page in range(start, end, PAGE_SIZE):
            out.extend(_page_findings(vm, reg, page, m))
    return out


def _required(vm: VMDesc, reg: _Region) -> list[ExpectedPage]:
    """Touched pages with a valid VPTE path must be mapped to their image page."""
    out = []
    for page, acc in sorted(page_accesses(vm.touched).items()):
        t = None if vm.torn_down or vm.range_of(page) is None else reg.translate(page)
        if t is None:
            continue    # the access faulted back to the vkernel: nothing to map
        off, perms = t
        out.append(ExpectedPage(page, vm.backing.resolve(reg.rng, off), r=True,
                                w=True if "w" in acc and perms.w else None,
                                x=True if "x" in acc and perms.x else None))
    return out


def expect(vm: VMDesc) -> Expectation:
    """The ``dragonfly-vkernel`` expectation for one VPAGETABLE region of *vm*."""
    reg = _region(vm)
    return Expectation(vm.name, _required(vm, reg), lambda m: _check_leaf(vm, reg, m))


DRAGONFLY_VKERNEL = Model(
    name="dragonfly-vkernel",
    description="DragonFly vkernel: host PTEs of a VPAGETABLE region follow its VPTEs",
    formats=("npt",), expect=expect)
