"""Walkers of Linux's generic containers: list_head, xarray, rbtree.

Named after the kernel helpers they mirror (``list_for_each_entry``,
``xa_for_each``, ``rb_first``/``rb_next``).  They read kernel *virtual*
memory through any ``read(addr, size)`` object and take every offset from
BTF.  A corrupt structure (NULL link, loop, too many entries) raises
:class:`~harness.errors.InfraError`; it never ends a walk quietly.

>>> # for kvm in list_for_each_entry(kmem, btf, syms["vm_list"], "struct kvm", "vm_list"): ...
"""

from __future__ import annotations

from collections.abc import Iterator

from harness.errors import InfraError
from harness.ktypes import KernelTypes
from harness.mem import PhysMem, read_u64

__all__ = ["container_of", "list_for_each", "list_for_each_entry", "xa_for_each",
           "rbtree_inorder", "WalkLimitError", "MAX_ENTRIES", "xa_is_node"]

MAX_ENTRIES = 1 << 16       # no KVM list we walk is longer; a loop is corruption
XA_INTERNAL = 2             # xa_is_internal(): low two bits == 0b10
XA_NODE_MIN = 4096          # xa_is_node(): internal and above 4096 (sibling/retry/zero are below)


class WalkLimitError(InfraError):
    """A kernel container had a NULL link, a loop or too many entries."""


def container_of(ptr: int, btf: KernelTypes, type_: str, member: str) -> int:
    """The address of the *type_* that holds *member* at *ptr* (like the C macro)."""
    return ptr - btf.offsetof(type_, member)


def list_for_each(kmem: PhysMem, btf: KernelTypes, head: int) -> Iterator[int]:
    """Addresses of each ``struct list_head`` on the list at *head* (head excluded)."""
    next_off = btf.offsetof("struct list_head", "next")
    seen = {head}
    pos = read_u64(kmem, head + next_off)
    while pos != head:
        if pos == 0 or pos in seen or len(seen) > MAX_ENTRIES:
            raise WalkLimitError(f"list at {head:#x}: bad link {pos:#x} after "
                                 f"{len(seen) - 1} entries (NULL, loop or too long)")
        seen.add(pos)
        yield pos
        pos = read_u64(kmem, pos + next_off)


def list_for_each_entry(kmem: PhysMem, btf: KernelTypes, head: int, type_: str,
                        member: str) -> Iterator[int]:
    """Addresses of each *type_* linked through its list_head *member*."""
    for pos in list_for_each(kmem, btf, head):
        yield container_of(pos, btf, type_, member)


def xa_is_node(entry: int) -> bool:
    """``xa_is_node()``: an internal entry pointing at a ``struct xa_node``."""
    return entry & 3 == XA_INTERNAL and entry > XA_NODE_MIN


def xa_for_each(kmem: PhysMem, btf: KernelTypes, xa: int) -> Iterator[tuple[int, int]]:
    """(index, entry) for every present entry of the ``struct xarray`` at *xa*.

    Mirrors ``xa_for_each``: a head that is not a node is the entry at index 0;
    sibling, retry and zero entries (internal, below 4096) are skipped.
    """
    head = read_u64(kmem, xa + btf.offsetof("struct xarray", "xa_head"))
    if head == 0:
        return
    if not xa_is_node(head):
        if head & 3 != XA_INTERNAL:
            yield 0, head
        return
    yield from _xa_node(kmem, btf, head - XA_INTERNAL, 0, depth=0)


def _xa_node(kmem: PhysMem, btf: KernelTypes, node: int, base: int,
             depth: int) -> Iterator[tuple[int, int]]:
    """Entries below one ``struct xa_node`` whose first index is *base*."""
    if depth > 12:
        raise WalkLimitError(f"xarray node {node:#x}: deeper than any 64-bit xarray")
    shift = kmem.read(node + btf.offsetof("struct xa_node", "shift"), 1)[0]
    slots_off = btf.offsetof("struct xa_node", "slots")
    nslots = btf.sizeof(btf.member_type("struct xa_node", "slots")) // 8
    raw = kmem.read(node + slots_off, 8 * nslots)
    for i in range(nslots):
        entry = int.from_bytes(raw[8 * i:8 * i + 8], "little")
        index = base + (i << shift)
        if entry == 0:
            continue
        if xa_is_node(entry):
            if shift == 0:
                raise WalkLimitError(f"xarray node {node:#x}: node entry at shift 0")
            yield from _xa_node(kmem, btf, entry - XA_INTERNAL, index, depth + 1)
        elif entry & 3 != XA_INTERNAL:
            yield index, entry


def rbtree_inorder(kmem: PhysMem, btf: KernelTypes, root: int) -> Iterator[int]:
    """Addresses of each ``struct rb_node`` of the ``struct rb_root`` at *root*, in order."""
    left = btf.offsetof("struct rb_node", "rb_left")
    right = btf.offsetof("struct rb_node", "rb_right")
    stack: list[int] = []
    seen: set[int] = set()
    node = read_u64(kmem, root + btf.offsetof("struct rb_root", "rb_node"))
    while stack or node:
        while node:
            if node in seen or len(seen) > MAX_ENTRIES:
                raise WalkLimitError(f"rbtree at {root:#x}: node {node:#x} seen twice "
                                     "or tree too large")
            seen.add(node)
            stack.append(node)
            node = read_u64(kmem, node + left)
        node = stack.pop()
        yield node
        node = read_u64(kmem, node + right)
