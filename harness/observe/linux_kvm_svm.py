"""Linux KVM on AMD SVM: live VMs from vm_list, roots cross-checked, NPT walked."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.formats import FORMATS
from harness.formats.base import WalkLimits, WalkResult
from harness.observe import ObservedVM, l1_memories, settle_in_kernel
from harness.observe.linux import fetch_kallsyms, load_btf

__all__ = ["observe", "prepare"]


def prepare(ctx: Any) -> None:
    """What must be fetched while L1 still runs: kallsyms, CPU address size, BTF."""
    from harness.discovery.linux_kvm_svm import BTF_MODULES, NEEDED_SYMBOLS

    fetch_kallsyms(ctx, NEEDED_SYMBOLS)
    if "maxphyaddr" not in ctx.cache:
        out = ctx.console.run("grep -m1 'address sizes' /proc/cpuinfo", timeout=30).output
        ctx.cache["maxphyaddr"] = int(out.split(":")[1].split("bits physical")[0])
    load_btf(ctx, BTF_MODULES)


def _vmrun_vmcbs(ctx: Any) -> list[int] | None:
    from harness.discovery.linux_kvm_svm import parse_vmrun_log
    path = ctx.machine.qemu_log_path
    if not ctx.machine.vmrun_log or not Path(path).exists():
        return None
    return parse_vmrun_log(Path(path).read_text(errors="replace"))


def observe(ctx: Any) -> list[ObservedVM]:
    """Discover live VMs and walk each nested root (L1 must be halted by the caller)."""
    from harness.discovery.linux_kvm_svm import discover, paging_levels

    gdb = ctx.gdb
    # CS.RPL == 0: not halted in user mode, where page-table isolation unmaps the kernel
    settle_in_kernel(gdb, lambda: gdb.register("cs") & 3 == 0)
    pmem, kmem, mem_size = l1_memories(ctx)
    levels = paging_levels(gdb.register("cr4"))
    vms = discover(kmem, pmem, ctx.cache["kallsyms"], ctx.cache["btf"],
                   vmrun_vmcbs=_vmrun_vmcbs(ctx), mem_size=mem_size)
    fmt = FORMATS["npt"]
    out = []
    params = fmt.params(levels=levels, flavour="kvm", maxphyaddr=ctx.cache["maxphyaddr"],
                        limits=WalkLimits(mem_size=mem_size))
    for vm in vms:
        # a VM whose vCPUs never ran has no root yet, and so no mappings
        walk = fmt.walk(pmem, vm.root, params) if vm.root is not None else WalkResult()
        slots = [{"id": s.id, "gpa": s.gpa, "size": s.size, "hva": s.hva, "flags": s.flags}
                 for s in vm.memslots]
        out.append(ObservedVM(
            name=f"kvm@{vm.kvm:#x}", format="npt", root=vm.root or 0, params=params, walk=walk,
            slot_hvas=frozenset(s.hva for s in vm.memslots), slots=slots,
            discovery={"pid": vm.pid, "levels": levels, "checks": dict(vm.checks),
                       "vcpus": [_vcpu_json(v) for v in vm.vcpus]}))
    return out


def _vcpu_json(v: Any) -> dict[str, Any]:
    import dataclasses
    return {k: (hex(x) if isinstance(x, int) and k not in ("index", "vcpu_id", "asid") else x)
            for k, x in dataclasses.asdict(v).items()}
