"""What every Linux KVM discovery reads the same way, whatever the architecture.

:class:`KernelReader` reads typed members of kernel structures with BTF
offsets; :func:`read_memslots` reads a ``struct kvm``'s address space 0
memslots (``memslots[0]`` -> ``gfn_tree``, an rb-tree of
``struct kvm_memory_slot`` through ``gfn_node[node_idx]``), as
``kvm_for_each_memslot`` does.  No offset is hard-coded.

>>> # slots = read_memslots(KernelReader(kmem, btf), kvm)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from harness.discovery.linux_lists import container_of, rbtree_inorder
from harness.errors import InfraError
from harness.ktypes import KernelTypes, TypeLookupError
from harness.mem import PAGE_SIZE, PhysMem, read_u64

__all__ = ["KernelReader", "MemSlot", "read_memslots", "read_memslot", "creator_tgid",
           "x86_layout_base", "STATIC_PAGE_OFFSET", "STATIC_VMEMMAP"]

# x86-64's fixed layout (4-level paging) when the kernel has no dynamic one: without
# CONFIG_RANDOMIZE_MEMORY and CONFIG_X86_5LEVEL the bases are constants, not the
# variables page_offset_base and vmemmap_base (which kallsyms then lacks)
STATIC_PAGE_OFFSET = 0xFFFF_8880_0000_0000    # __PAGE_OFFSET_BASE_L4
STATIC_VMEMMAP = 0xFFFF_EA00_0000_0000        # __VMEMMAP_BASE_L4


def x86_layout_base(kmem: PhysMem, syms: Mapping[str, int], name: str, static: int) -> int:
    """The value of the layout variable *name* (``page_offset_base``, ``vmemmap_base``),
    or its fixed 4-level value *static* when the kernel has no such variable.

    >>> x86_layout_base(None, {}, "page_offset_base", STATIC_PAGE_OFFSET) == STATIC_PAGE_OFFSET
    True
    """
    return read_u64(kmem, syms[name]) if name in syms else static


@dataclass(frozen=True)
class MemSlot:
    """One KVM memslot of address space 0."""

    id: int
    gpa: int              # base_gfn << 12
    size: int             # npages << 12
    hva: int              # userspace_addr
    flags: int            # KVM_MEM_LOG_DIRTY_PAGES 1, KVM_MEM_READONLY 2


class KernelReader:
    """Typed reads of kernel virtual memory with BTF offsets."""

    def __init__(self, kmem: PhysMem, btf: KernelTypes) -> None:
        self.kmem = kmem
        self.btf = btf

    def field(self, addr: int, type_: str, path: str) -> int:
        """The integer or pointer member *path* of the *type_* at *addr*."""
        mtype = self.btf.member_type(type_, path)
        size = self.btf.sizeof(mtype)
        raw = self.kmem.read(addr + self.btf.offsetof(type_, path), size)
        return int.from_bytes(raw, "little", signed=self.btf.is_signed(mtype))

    def addr_of(self, addr: int, type_: str, path: str) -> int:
        """``&addr->path``."""
        return addr + self.btf.offsetof(type_, path)

    def has(self, type_: str, path: str) -> bool:
        """Whether *type_* has member *path* in this kernel's BTF."""
        try:
            self.btf.offsetof(type_, path)
        except TypeLookupError:
            return False
        return True


def read_memslots(k: KernelReader, kvm: int) -> list[MemSlot]:
    """Address space 0's memslots of the ``struct kvm`` at *kvm*, in GPA order."""
    slots = k.field(kvm, "struct kvm", "memslots[0]")
    node_idx = k.field(slots, "struct kvm_memslots", "node_idx")
    if node_idx not in (0, 1):
        raise InfraError(f"kvm_memslots {slots:#x}: node_idx {node_idx} is neither 0 nor 1")
    root = k.addr_of(slots, "struct kvm_memslots", "gfn_tree")
    member = f"gfn_node[{node_idx}]"
    out = []
    for node in rbtree_inorder(k.kmem, k.btf, root):
        slot = container_of(node, k.btf, "struct kvm_memory_slot", member)
        out.append(read_memslot(k, slot))
    return out


def read_memslot(k: KernelReader, slot: int) -> MemSlot:
    """One ``struct kvm_memory_slot``."""
    def f(name: str) -> int:
        return k.field(slot, "struct kvm_memory_slot", name)

    return MemSlot(id=f("id"), gpa=f("base_gfn") * PAGE_SIZE, size=f("npages") * PAGE_SIZE,
                   hva=f("userspace_addr"), flags=f("flags"))


def creator_tgid(k: KernelReader, kvm: int) -> int | None:
    """The process id of the VM's owner: ``kvm->mm->owner->tgid``.

    ``kvm->userspace_pid`` is ``task_pid_nr(current)`` at KVM_CREATE_VM: the id of the
    creating *thread*.  The process is the thread group that owns the VM's ``mm``
    (``mm_struct.owner`` exists with CONFIG_MEMCG); None where this kernel has no owner
    (or the VM no mm).
    """
    if not k.has("struct mm_struct", "owner"):
        return None
    mm = k.field(kvm, "struct kvm", "mm")
    owner = k.field(mm, "struct mm_struct", "owner") if mm else 0
    return k.field(owner, "struct task_struct", "tgid") if owner else None
