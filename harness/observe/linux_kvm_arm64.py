"""Linux KVM on arm64: live VMs from vm_list, stage-2 roots cross-checked, tables walked.

``prepare`` reads kallsyms over the console (KASLR moves every symbol) and
vmlinux's BTF from the image's kernel file (a raw arm64 Image:
:func:`harness.kernel_image.kernel_btf`).  ``observe`` runs with L1 halted,
reads ``VTTBR_EL2`` and ``VTCR_EL2`` through the gdbstub, discovers the VMs
(:mod:`harness.discovery.linux_kvm_arm64`) and walks each root with
``FORMATS["stage2"]`` using the VM's own IPA size and start level.
"""

from __future__ import annotations

from typing import Any

from harness.formats import FORMATS
from harness.formats.base import WalkLimits
from harness.formats.stage2 import Stage2Params, root_entries
from harness.observe import ObservedVM, l1_memories, settle_in_kernel
from harness.observe.linux import fetch_kallsyms, load_btf

__all__ = ["observe", "prepare"]


def prepare(ctx: Any) -> None:
    """What must be fetched while L1 still runs: kallsyms; and BTF from the image."""
    from harness.discovery.linux_kvm_arm64 import NEEDED_SYMBOLS

    fetch_kallsyms(ctx, NEEDED_SYMBOLS)
    load_btf(ctx)       # KVM is built in: vmlinux's BTF is enough


def observe(ctx: Any) -> list[ObservedVM]:
    """Discover live VMs and walk each stage-2 root (L1 must be halted by the caller)."""
    from harness.discovery.linux_kvm_arm64 import discover

    gdb = ctx.gdb
    # PSTATE.EL (bits 3:2) != 0: not halted in EL0, where KPTI unmaps the kernel
    settle_in_kernel(gdb, lambda: (gdb.register("cpsr") >> 2) & 3 != 0)
    pmem, kmem, mem_size = l1_memories(ctx)
    vttbr, vtcr = gdb.register("VTTBR_EL2"), gdb.register("VTCR_EL2")
    vms = discover(kmem, pmem, ctx.cache["kallsyms"], ctx.cache["btf"], vttbr=vttbr,
                   vtcr=vtcr, mem_size=mem_size, virt_to_phys=lambda va: _gva2gpa(ctx, va))
    fmt = FORMATS["stage2"]
    out = []
    for vm in vms:
        s2 = vm.stage2
        params = Stage2Params(s2.ia_bits, s2.start_level, limits=WalkLimits(mem_size=mem_size))
        slots = [{"id": s.id, "gpa": s.gpa, "size": s.size, "hva": s.hva, "flags": s.flags}
                 for s in vm.memslots]
        out.append(ObservedVM(
            name=f"kvm@{vm.kvm:#x}", format="stage2", root=vm.root, params=params,
            walk=fmt.walk(pmem, vm.root, params),
            slot_hvas=frozenset(s.hva for s in vm.memslots), slots=slots,
            discovery={"pid": vm.pid, "checks": dict(vm.checks), "stage2": _stage2_json(s2),
                       "root_pages": max(1, root_entries(params) // 512),
                       "VTTBR_EL2": hex(vttbr), "VTCR_EL2": hex(vtcr)}))
    return out


def _gva2gpa(ctx: Any, va: int) -> int:
    """QEMU's own translation of a kernel virtual address (HMP ``gva2gpa``)."""
    import re

    from harness.errors import InfraError
    out = str(ctx.machine.qmp_command("human-monitor-command",
                                      command_line=f"gva2gpa {va:#x}"))
    m = re.search(r"gpa:\s*(0x[0-9a-fA-F]+)", out)
    if m is None:
        raise InfraError(f"QEMU gva2gpa {va:#x}: {out.strip()!r}")
    return int(m.group(1), 16)


def _stage2_json(s2: Any) -> dict[str, Any]:
    """The Stage2Root as JSON (addresses in hex)."""
    import dataclasses
    return {k: (x if k in ("ia_bits", "start_level") else hex(x))
            for k, x in dataclasses.asdict(s2).items()}
