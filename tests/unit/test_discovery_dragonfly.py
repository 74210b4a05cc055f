"""DragonFly vkernel discovery on constructed L1 memory, with the types from the DWARF gcc
writes for DragonFly-shaped structs (tests/data/dragonfly/kern_types.c; -DDFLY_OLD: the
older map list and procglob), and the memory image written by the workload's own VPTE
builder (images/workload/vkernel_tables.c, built here by gcc).

The world: a slat-workload process (pid 4242, behind another process in its hash
bucket) with a MAP_VPAGETABLE region between two ordinary entries and a vmspace made
by vmspace_create() mapping the same image; the image's object pages scattered in
L1 memory; the process's pmap mapping the touched pages of the region (and a page
just below it, which the observer must clip away).
"""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from encoders import NptEncoder, Spec, build

from harness.arch import ARCHES
from harness.ctf import Ctf, CtfError
from harness.diff import diff
from harness.discovery import dragonfly_vkernel as dv
from harness.discovery.linux_kvm_common import KernelReader
from harness.dwarf import Dwarf
from harness.errors import InfraError
from harness.formats.vpte import ObjectImage, VPTEParams, translate
from harness.guests.dragonfly import dragonfly_backing
from harness.guests.record import BackingQuery
from harness.mem import DictMem
from harness.models import MODELS, Access, MemRange, VMDesc
from harness.observe import KernelView
from harness.observe.dragonfly_vkernel import observe
from harness.target import FakeTarget, l1_memories

ROOT = Path(__file__).resolve().parents[2]
TYPES_C = ROOT / "tests" / "data" / "dragonfly" / "kern_types.c"
TABLES_MAIN = ROOT / "tests" / "data" / "dragonfly" / "tables_main.c"
WORKLOAD = ROOT / "images" / "workload"
pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")

MEM = 64 << 20
PID, OTHER_PID, INIT_PID = 4242, 4242 - 256, 1
REGION, SIZE = 0x1000_0000_0000, 4 << 20
VMSPACE_ID = 0x5A17
TOUCHED = {0x2000: "w", 0x3000: "r", 0x201000: "w", 0x3FF000: "r"}   # region offsets
V, RW, U, A, M = 0x1, 0x2, 0x4, 0x20, 0x40                          # VPTE bits, typed again
KBASE = 0xFFFF_FFFF_8200_0000            # where the world's kernel objects live (virtual)
ROOT1, ROOT2 = 0x1800000, 0x1900000      # the two vmspaces' PML4s (physical)


# -- gcc: the types and the image --------------------------------------------------------

def kernel_elf(tmp: Path, old: bool = False) -> bytes:
    exe = tmp / ("kern-old" if old else "kern")
    subprocess.run(["gcc", "-g", "-O0", *(["-DDFLY_OLD"] if old else []), "-o", str(exe),
                    str(TYPES_C)], check=True)
    return exe.read_bytes()


@dataclass(frozen=True)
class Layout:
    npages: int
    nl1: int
    data_first: int
    image_size: int
    master_pde: int
    image: bytes


def vk_image(tmp: Path, va: int = REGION, size: int = SIZE) -> Layout:
    """The memory image vkernel_tables.c builds for a region of *size* bytes at *va*."""
    exe = tmp / "tables_main"
    if not exe.exists():
        subprocess.run(["gcc", "-std=gnu11", "-Wall", "-Wextra", "-Werror", "-I",
                        str(WORKLOAD), "-o", str(exe), str(TABLES_MAIN),
                        str(WORKLOAD / "vkernel_tables.c")], check=True)
    out = tmp / f"image-{va:x}-{size:x}"
    proc = subprocess.run([str(exe), hex(va), hex(size), str(out)], capture_output=True,
                          text=True, check=False)
    if proc.returncode == 2:
        raise ValueError(proc.stdout.strip())
    assert proc.returncode == 0, proc.stderr
    nums = [int(x) for x in proc.stdout.split()[:5]]
    return Layout(*nums, image=out.read_bytes())


@pytest.fixture(scope="module")
def tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("dfly")


@pytest.fixture(scope="module")
def types(tmp: Path) -> Ctf:
    return Dwarf.load_elf(kernel_elf(tmp))


@pytest.fixture(scope="module")
def old_types(tmp: Path) -> Ctf:
    return Dwarf.load_elf(kernel_elf(tmp, old=True))


# -- the workload's VPTE builder, checked against the walker ---------------------------

def test_the_workload_tables_map_every_region_page_to_its_tagged_data_page(tmp: Path) -> None:
    lay = vk_image(tmp)
    assert (lay.npages, lay.nl1, lay.data_first) == (1024, 2, 5)
    assert lay.master_pde == V | RW | U and lay.image_size == len(lay.image)
    mem = DictMem(size=len(lay.image))
    mem.write(0, lay.image)
    params = VPTEParams(base=REGION, size=SIZE)
    for page in range(lay.npages):
        va = REGION + page * 0x1000
        got = translate(mem, lay.master_pde, va + 0x123, params)
        assert got is not None, hex(va)
        off, perms = got
        assert off == (lay.data_first + page) * 0x1000 + 0x123
        assert (perms.r, perms.w, perms.m, perms.level) == (True, True, False, 1)
        tag = struct.unpack_from("<Q", lay.image, (lay.data_first + page) * 0x1000 + 0xFF8)[0]
        assert tag == va                                      # each page holds its address
    assert translate(mem, lay.master_pde, REGION + SIZE, VPTEParams(base=REGION,
                                                                   size=SIZE + 0x1000)) is None


def test_the_workload_refuses_regions_its_tables_cannot_hold(tmp: Path) -> None:
    for size in (0, 0x1000, (2 << 20) + 0x1000, 2 << 30):
        with pytest.raises(ValueError, match="refused"):
            vk_image(tmp, size=size)
    assert vk_image(tmp, size=64 << 20).nl1 == 32


# -- a constructed DragonFly L1 -----------------------------------------------------------

@dataclass
class World:
    """L1 memory, kernel virtual pages, and the types the structures are laid out by."""

    T: Ctf
    phys: DictMem = field(default_factory=lambda: DictMem(size=MEM))
    virt: dict[int, int] = field(default_factory=dict)
    next_va: int = KBASE
    next_pa: int = 0x100000
    syms: dict[str, int] = field(default_factory=dict)

    def alloc(self, size: int) -> int:
        """Kernel memory of *size* bytes: fresh virtual pages on fresh physical pages."""
        va = self.next_va
        for off in range(0, size, 0x1000):
            self.virt[va + off] = self.next_pa
            self.next_pa += 0x1000
        self.next_va += (size + 0xFFF) & ~0xFFF
        return va

    def map(self, pa: int) -> int:
        """A kernel virtual address of the physical page *pa* (a pmap's pm_pml4)."""
        va = self.next_va
        self.virt[va] = pa
        self.next_va += 0x1000
        return va

    def new(self, spec: str) -> int:
        return self.alloc(self.T.sizeof(spec))

    def write(self, kva: int, data: bytes) -> None:
        for i, b in enumerate(data):       # byte-wise: objects may straddle pages
            self.phys.write(self.virt[(kva + i) & ~0xFFF] + ((kva + i) & 0xFFF), bytes([b]))

    def put(self, addr: int, spec: str, path: str, value: int) -> None:
        mtype = self.T.member_type(spec, path)
        size = self.T.sizeof(mtype)
        self.write(addr + self.T.offsetof(spec, path), value.to_bytes(size, "little",
                                                                      signed=value < 0))

    def has(self, spec: str, path: str) -> bool:
        return KernelReader(DictMem(), self.T).has(spec, path)


def rb_tree(W: World, spec: str, link: str, nodes: list[int]) -> int:
    """Link sorted *nodes* into a balanced tree through *link*; the root (0 if empty)."""
    if not nodes:
        return 0
    mid = len(nodes) // 2
    left, right = rb_tree(W, spec, link, nodes[:mid]), rb_tree(W, spec, link, nodes[mid + 1:])
    W.put(nodes[mid], spec, f"{link}.rbe_left", left)
    W.put(nodes[mid], spec, f"{link}.rbe_right", right)
    return nodes[mid]


def image_page(lay: Layout, i: int) -> int:
    """The L1 physical page holding the image's page *i* (in reverse order, on purpose)."""
    return 0x2000000 + (lay.image_size // 0x1000 - 1 - i) * 0x1000


def data_page(lay: Layout, offset: int) -> int:
    return image_page(lay, lay.data_first + offset // 0x1000)


@dataclass
class Built:
    W: World
    lay: Layout
    proc: int
    obj: int
    entry: int
    vs2_entry: int


def make_object(W: World, lay: Layout, image: bytearray) -> int:
    obj = W.new("struct vm_object")
    pages = []
    for i in range(lay.image_size // 0x1000):
        W.phys.write(image_page(lay, i), bytes(image[i * 0x1000:(i + 1) * 0x1000]))
        page = W.new("struct vm_page")
        W.put(page, "struct vm_page", "pindex", i)
        W.put(page, "struct vm_page", "phys_addr", image_page(lay, i))
        W.put(page, "struct vm_page", "object", obj)
        pages.append(page)
    W.put(obj, "struct vm_object", "rb_memq.rbh_root",
          rb_tree(W, "struct vm_page", "rb_entry", pages))
    W.put(obj, "struct vm_object", "size", lay.image_size // 0x1000)
    return obj


def make_entry(W: World, start: int, end: int, maptype: int, obj: int = 0,
               master_pde: int = 0, prot: int = 3) -> int:
    e = W.new("struct vm_map_entry")
    new = W.has("struct vm_map_entry", "ba.start")
    W.put(e, "struct vm_map_entry", "ba.start" if new else "start", start)
    W.put(e, "struct vm_map_entry", "ba.end" if new else "end", end)
    W.put(e, "struct vm_map_entry", "ba.object" if new else "object.vm_object", obj)
    W.put(e, "struct vm_map_entry", "maptype", maptype)
    W.put(e, "struct vm_map_entry", "aux.master_pde", master_pde)
    W.put(e, "struct vm_map_entry", "protection", prot)
    return e


def make_vmspace(W: World, entries: list[int], root_pa: int) -> int:
    vs = W.new("struct vmspace")
    vm_map = vs + W.T.offsetof("struct vmspace", "vm_map")
    if W.has("struct vm_map", "rb_root.rbh_root"):
        W.put(vm_map, "struct vm_map", "rb_root.rbh_root",
              rb_tree(W, "struct vm_map_entry", "rb_entry", entries))
    else:                                    # the older list, closed on the header
        header = vm_map + W.T.offsetof("struct vm_map", "header")
        chain = [*entries, header]
        W.put(vm_map, "struct vm_map", "header.next", chain[0])
        for a, b in zip(chain, chain[1:], strict=False):
            W.put(a, "struct vm_map_entry", "next", b)
    pmap = vs + W.T.offsetof("struct vmspace", "vm_pmap")
    W.put(pmap, "struct pmap", "pm_pml4", W.map(root_pa))
    return vs


def make_proc(W: World, pid: int, comm: str, vmspace: int, vkernel: int = 0) -> int:
    p = W.new("struct proc")
    W.put(p, "struct proc", "p_pid", pid)
    W.put(p, "struct proc", "p_vmspace", vmspace)
    W.put(p, "struct proc", "p_vkernel", vkernel)
    W.write(p + W.T.offsetof("struct proc", "p_comm"), comm.encode() + b"\0")
    return p


def link_procs(W: World, buckets: dict[int, list[int]]) -> None:
    """The process hash: allprocs[256] (6.x) or procglob[256].allproc (older)."""
    try:
        W.syms["procglob"] = W.alloc(256 * W.T.sizeof("struct procglob"))
    except CtfError:
        W.syms["allprocs"] = W.alloc(256 * W.T.sizeof("struct proclist"))
    heads = dv.proc_heads(KernelReader(DictMem(), W.T), W.syms)
    for bucket, procs in buckets.items():
        W.put(heads[bucket], "struct proclist", "lh_first", procs[0])
        for a, b in zip(procs, procs[1:], strict=False):
            W.put(a, "struct proc", "p_list.le_next", b)


def world(types: Ctf, tmp: Path, host_leaves: dict[int, str] | None = None) -> Built:
    """The vkernel world described in the module's docstring."""
    W = World(types)
    lay = vk_image(tmp)
    image = bytearray(lay.image)
    touched = TOUCHED if host_leaves is None else host_leaves
    for off, acc in touched.items():              # the host's fault path set A (and M)
        leaf = (3 + off // 0x1000 // 512) * 0x1000 + 8 * (off // 0x1000 % 512)
        vpte = struct.unpack_from("<Q", image, leaf)[0] | A | (M if acc == "w" else 0)
        struct.pack_into("<Q", image, leaf, vpte)
    obj = make_object(W, lay, image)
    entry = make_entry(W, REGION, REGION + SIZE, dv.VM_MAPTYPE_VPAGETABLE, obj, lay.master_pde)
    text = make_entry(W, 0x400000, 0x500000, 1, prot=5)
    plain = make_entry(W, 0x8_0000_0000, 0x8_0000_0000 + lay.image_size, 1, obj)
    vs1 = make_vmspace(W, [text, entry, plain], ROOT1)
    vs2_entry = make_entry(W, REGION + (1 << 30), REGION + (1 << 30) + SIZE,
                           dv.VM_MAPTYPE_VPAGETABLE, obj, lay.master_pde)
    vs2 = make_vmspace(W, [vs2_entry], ROOT2)
    ve = W.new("struct vmspace_entry")
    W.put(ve, "struct vmspace_entry", "id", VMSPACE_ID)
    W.put(ve, "struct vmspace_entry", "vmspace", vs2)
    vkp = W.new("struct vkernel_proc")
    W.put(vkp, "struct vkernel_proc", "root.rbh_root", ve)
    proc = make_proc(W, PID, "slat-workload", vs1, vkp)
    other = make_proc(W, OTHER_PID, "sh", make_vmspace(W, [make_entry(W, 0x400000, 0x401000,
                                                                      1)], 0x1A00000))
    init = make_proc(W, INIT_PID, "init", make_vmspace(W, [], 0x1B00000))
    link_procs(W, {PID % 256: [other, proc], INIT_PID: [init]})
    # the host pmap: the touched region pages, and the plain mapping's page just below
    # the region (same PML4 slot: the observer must clip it away)
    leaves = [Spec(REGION + off, data_page(lay, off), 0x1000, True, acc == "w", False)
              for off, acc in sorted(touched.items())]
    leaves.append(Spec(REGION - 0x1000, image_page(lay, 0), 0x1000, True, True, False))
    build(W.phys, NptEncoder(), ROOT1, 4, leaves)
    return Built(W, lay, proc, obj, entry, vs2_entry)


def view_of(W: World) -> KernelView:
    target = FakeTarget(W.phys, registers={"cs": 0x8}, virt=W.virt)
    return KernelView(target=target, arch=ARCHES["x86_64"], mem=l1_memories(target, [(0, MEM)]),
                      symbols=dict(W.syms), types=W.T)


def reader(W: World) -> Iterator[KernelReader]:
    yield KernelReader(l1_memories(FakeTarget(W.phys, virt=W.virt), [(0, MEM)]).kernel, W.T)


def translate_kva(W: World) -> object:
    return FakeTarget(W.phys, virt=W.virt).translate


# -- discovery ----------------------------------------------------------------------------

@pytest.mark.parametrize("variant", ["6.x", "old"])
def test_discovery_finds_both_vpagetable_entries(variant: str, types: Ctf, old_types: Ctf,
                                                 tmp: Path) -> None:
    B = world(types if variant == "6.x" else old_types, tmp)
    assert ("allprocs" if variant == "6.x" else "procglob") in B.W.syms
    k = next(reader(B.W))
    regions = dv.discover(k, B.W.syms, translate_kva(B.W), MEM)   # type: ignore[arg-type]
    assert [(r.pid, r.comm, r.space, r.start, r.end, r.root) for r in regions] == [
        (PID, "slat-workload", "process", REGION, REGION + SIZE, ROOT1),
        (PID, "slat-workload", f"vmspace {VMSPACE_ID:#x}", REGION + (1 << 30),
         REGION + (1 << 30) + SIZE, ROOT2)]
    first = regions[0]
    assert (first.master_pde, first.object, first.offset, first.prot) == (
        B.lay.master_pde, B.obj, 0, "rw")
    assert first.object_size == B.lay.image_size and len(first.pages) == B.lay.image_size // 4096
    assert first.pages[0x5000] == image_page(B.lay, 5) and all(first.checks.values())
    assert dv.find_proc(k, B.W.syms, PID) == B.proc
    with pytest.raises(InfraError, match="no process with pid 99"):
        dv.find_proc(k, B.W.syms, 99)


def test_observer_walks_the_region_and_gives_the_model_the_image(types: Ctf, tmp: Path) -> None:
    B = world(types, tmp)
    obs = observe(view_of(B.W))
    assert [ob.name for ob in obs] == [
        f"vkernel:{PID}:process@{B.entry:#x}",
        f"vkernel:{PID}:vmspace {VMSPACE_ID:#x}@{B.vs2_entry:#x}"]
    ob, ob2 = obs
    assert (ob.format, ob.root, ob.params.top_slots) == ("npt", ROOT1, (REGION >> 39,))
    assert sorted((m.gpa - REGION, m.hpa, m.w) for m in ob.walk.mappings) == [
        (off, data_page(B.lay, off), acc == "w") for off, acc in sorted(TOUCHED.items())]
    assert ob.slot_hvas == frozenset({REGION}) and ob.slots == [
        {"id": 0, "gpa": REGION, "size": SIZE, "hva": REGION, "kind": "ram", "prot": "rw"}]
    image = ob.model_options["image"]
    assert isinstance(image, ObjectImage) and ob.model_options["master_pde"] == V | RW | U
    assert image.resolve(None, 0x5000) == image_page(B.lay, 5)
    vpte = ob.discovery["vpte"]
    assert vpte["bytes"] == SIZE and vpte["findings"] == []
    assert [x["dirty"] for x in vpte["first"]] == [False, False, True, False]
    assert ob2.walk.mappings == [] and ob2.slot_hvas == frozenset({REGION + (1 << 30)})
    json.dumps([o.discovery for o in obs])                      # slat.json holds it


def judge(ob: object, backing: object, touched: dict[int, str]) -> list[tuple[str, int | None]]:
    desc = VMDesc(name="w1/vm0", ranges=(MemRange(REGION, SIZE, prot="rw", hva=REGION),),
                  backing=backing,                                     # type: ignore[arg-type]
                  touched=tuple(Access(REGION + o, a) for o, a in touched.items()),
                  options=dict(ob.model_options))                      # type: ignore[attr-defined]
    exp = MODELS["dragonfly-vkernel"].expect(desc)
    return [(f.kind, f.gpa) for f in diff(ob.walk, exp)]               # type: ignore[attr-defined]


def test_the_model_passes_the_consistent_host_pmap_and_names_a_stale_pte(
        types: Ctf, tmp: Path) -> None:
    B = world(types, tmp)
    view = view_of(B.W)
    back = dragonfly_backing(BackingQuery(pid=PID, slots=((REGION, SIZE, REGION),), l1=view))
    assert back.resolve(None, 0x5000) == image_page(B.lay, 5)
    (ob, _ob2) = observe(view)
    assert judge(ob, back, TOUCHED) == []
    # the vkernel clears the leaf VPTE of page 0x2000 and skips MADV_INVAL: the host PTE
    # it left is stale
    leaf = image_page(B.lay, 3) + 8 * 2
    B.W.phys.write_u64(leaf, 0)
    view = view_of(B.W)
    (ob, _ob2) = observe(view)
    back = dragonfly_backing(BackingQuery(pid=PID, slots=((REGION, SIZE, REGION),), l1=view))
    assert judge(ob, back, TOUCHED) == [("stale", REGION + 0x2000)]
    assert ob.discovery["vpte"]["bytes"] == SIZE - 0x1000


def test_backing_needs_the_process_and_its_region(types: Ctf, tmp: Path) -> None:
    B = world(types, tmp)
    view = view_of(B.W)
    second = dragonfly_backing(BackingQuery(pid=PID, slots=((0, SIZE, REGION + (1 << 30)),),
                                            l1=view))
    assert second.resolve(None, 0) == image_page(B.lay, 0)
    with pytest.raises(InfraError, match="no MAP_VPAGETABLE region at 0x400000"):
        dragonfly_backing(BackingQuery(pid=PID, slots=((0, SIZE, 0x400000),), l1=view))
    with pytest.raises(InfraError, match="no process with pid 7"):
        dragonfly_backing(BackingQuery(pid=7, slots=((0, SIZE, REGION),), l1=view))
    with pytest.raises(InfraError, match="needs the halted L1"):
        dragonfly_backing(BackingQuery(pid=PID, slots=((0, SIZE, REGION),)))


def test_hostile_kernel_memory_is_refused(types: Ctf, tmp: Path) -> None:
    B = world(types, tmp)
    k = next(reader(B.W))
    # a map entry whose right child is the root: the in-order walk would not end
    vs = k.field(B.proc, "struct proc", "p_vmspace")
    root = k.field(vs, "struct vmspace", "vm_map.rb_root.rbh_root")
    B.W.put(root, "struct vm_map_entry", "rb_entry.rbe_right", root)
    with pytest.raises(InfraError, match="a loop"):
        dv.map_entries(next(reader(B.W)), vs)
    B = world(types, tmp)
    pmap = k.field(B.proc, "struct proc", "p_vmspace") + types.offsetof("struct vmspace",
                                                                          "vm_pmap")
    B.W.put(pmap, "struct pmap", "pm_pml4", 0xFFFF_FFFF_DEAD_0000)
    with pytest.raises(InfraError, match="is not mapped"):
        dv.discover(next(reader(B.W)), B.W.syms, translate_kva(B.W), MEM)  # type: ignore[arg-type]
    B = world(types, tmp)
    head = dv.proc_heads(k, B.W.syms)[PID % 256]
    first = k.field(head, "struct proclist", "lh_first")
    B.W.put(B.proc, "struct proc", "p_list.le_next", first)       # the bucket loops
    with pytest.raises(InfraError, match="seen twice"):
        dv.all_procs(next(reader(B.W)), B.W.syms)
    with pytest.raises(InfraError, match="neither allprocs nor procglob"):
        dv.proc_heads(k, {})
