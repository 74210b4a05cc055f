"""The CTF reader against an independent CTF writer (tests/unit/ctf_writer.py)."""

from __future__ import annotations

import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import pytest
from ctf_writer import K_CONST, K_TYPEDEF, CtfWriter
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.ctf import Ctf, CtfError, Kind, ctf_section
from harness.discovery.linux_kvm_common import KernelReader
from harness.elf_symbols import SymbolError, elf_symbols
from harness.mem import DictMem


def kernelish(flavour: str = "openbsd") -> tuple[CtfWriter, dict[str, int]]:
    """A few OpenBSD-kernel-like types: base types, typedefs, a self-linked struct."""
    w = CtfWriter(flavour)
    t: dict[str, int] = {}
    t["unsigned"] = w.int_("unsigned", 8)
    t["u32"] = w.int_("unsigned int" if flavour == "freebsd" else "unsigned", 4)
    t["signed"] = w.int_("signed", 4, signed=True)
    t["char"] = w.int_("char", 1, signed=True)
    t["uint32_t"] = w.typedef("uint32_t", t["u32"])
    t["pid_t"] = w.typedef("pid_t", t["signed"])
    t["paddr_t"] = w.typedef("paddr_t", t["unsigned"])
    t["fwd"] = w.forward("struct vm")              # OpenBSD: empty struct first
    t["vm"] = w.declare("struct vm")
    t["pvm"] = w.ptr(t["vm"])
    t["link"] = w.struct("", [("sle_next", t["pvm"])])
    t["range"] = w.struct("struct vm_mem_range", [("vmr_gpa", t["paddr_t"]),
                                                  ("vmr_va", t["unsigned"]),
                                                  ("vmr_size", t["unsigned"]),
                                                  ("vmr_type", t["signed"])])
    t["ranges"] = w.array(t["range"], 16)
    t["name"] = w.array(t["char"], 64)
    t["cvoid"] = w.ptr(1 if flavour == "openbsd" else 0)
    t["cu32"] = w.qual(K_CONST, t["uint32_t"])
    w.struct("struct vm", [("vm_pmap", t["cvoid"]), ("vm_id", t["cu32"]),
                           ("vm_creator_pid", t["pid_t"]), ("vm_nmemranges", t["unsigned"]),
                           ("vm_memranges", t["ranges"]), ("vm_name", t["name"]),
                           ("vm_link", t["link"])], define=t["vm"])
    return w, t


def test_openbsd_layout_matches_the_writer() -> None:
    w, t = kernelish()
    ctf = Ctf.load(w.blob())
    lay = w.layout_of(t["vm"])
    for name in ("vm_pmap", "vm_id", "vm_creator_pid", "vm_nmemranges", "vm_memranges",
                 "vm_name", "vm_link"):
        assert ctf.offsetof("struct vm", name) == lay[name], name
    rsize = w.size_of(t["range"])
    assert rsize == 32
    assert ctf.offsetof("struct vm", "vm_memranges[3].vmr_size") == \
        lay["vm_memranges"] + 3 * rsize + w.layout_of(t["range"])["vmr_size"]
    assert ctf.offsetof("struct vm", "vm_link.sle_next") == lay["vm_link"]
    assert ctf.sizeof("struct vm") == w.size_of(t["vm"])


def test_openbsd_base_sizes_are_bits_in_the_section() -> None:
    """ctfconv writes 64 for an 8-byte integer; the reader turns it into 8 bytes."""
    w, _t = kernelish()
    raw = zlib.decompress(w.blob()[36:])
    # type 2 is "unsigned" (type 1 is void): info INTEGER, size field 64 (bits)
    _name, info, size = struct.unpack_from("<IHH", raw, 12)
    assert (info >> 11, size) == (Kind.INTEGER, 64)
    ctf = Ctf.load(w.blob())
    assert ctf.sizeof("unsigned") == 8
    assert ctf.sizeof("uint32_t") == 4
    assert ctf.sizeof("struct vm_mem_range") == 32
    # read with the wrong flavour the same section gives 8x sizes: the quirk is real
    assert Ctf.load(w.blob(), flavour="freebsd").sizeof("unsigned") == 64


def test_types_signedness_pointers_and_qualifiers() -> None:
    w, t = kernelish()
    ctf = Ctf.load(w.blob())
    assert ctf.is_signed("pid_t") and not ctf.is_signed("uint32_t")
    assert ctf.is_signed(ctf.member_type("struct vm", "vm_memranges[0].vmr_type"))
    vm_id = ctf.member_type("struct vm", "vm_id")
    assert vm_id.kind == Kind.CONST and ctf.sizeof(vm_id) == 4 and not ctf.is_signed(vm_id)
    nxt = ctf.member_type("struct vm", "vm_link.sle_next")
    pointee = ctf.pointee(nxt)
    assert pointee is not None and pointee.describe() == "struct vm" and not pointee.incomplete
    assert ctf.pointee(ctf.member_type("struct vm", "vm_pmap")) is None   # void *
    assert ctf.find("uint32_t").kind == K_TYPEDEF
    with pytest.raises(CtfError, match="not a pointer"):
        ctf.pointee(ctf.find("uint32_t"))


def test_forward_as_empty_struct() -> None:
    """The empty STRUCT ctfconv writes for an incomplete type never wins over the definition."""
    w = CtfWriter()
    fwd = w.forward("struct pmap")
    u = w.int_("unsigned", 8)
    ctf = Ctf.load(w.blob())
    assert ctf.type_by_id(fwd).incomplete
    with pytest.raises(CtfError, match="no size"):
        ctf.sizeof("struct pmap")
    w.struct("struct pmap", [("pm_pdirpa", u)])
    ctf = Ctf.load(w.blob())
    assert ctf.sizeof("struct pmap") == 8 and ctf.offsetof("struct pmap", "pm_pdirpa") == 0


def test_large_struct_members_and_long_sizes() -> None:
    """Structs of 8192 bytes or more use 16-byte members; sizes over 0xfffe the long form."""
    w = CtfWriter()
    u = w.int_("unsigned", 8)
    big = w.array(u, 20000)                              # 160000 bytes
    s = w.struct("struct vmm_softc", [("sc_pad", big), ("vm_list", u), ("mode", u)])
    ctf = Ctf.load(w.blob())
    assert ctf.offsetof("struct vmm_softc", "vm_list") == w.layout_of(s)["vm_list"] == 160000
    assert ctf.offsetof("struct vmm_softc", "mode") == 160008      # bit offset > 65535
    assert ctf.sizeof("struct vmm_softc") == w.size_of(s) == 160016
    assert ctf.sizeof(ctf.member_type("struct vmm_softc", "sc_pad")) == 160000


def test_enum_union_and_anonymous_members() -> None:
    w = CtfWriter()
    u = w.int_("unsigned", 8)
    u4 = w.int_("unsigned", 4)
    mode = w.enum("enum vmm_mode", [("VMM_MODE_UNKNOWN", 0), ("VMM_MODE_EPT", 1),
                                    ("VMM_MODE_RVI", 2)])
    anon = w.struct("", [("vei", u4), ("vee", u)], union=True)
    s = w.struct("struct vm_exit", [("", anon), ("mode", mode), ("cpl", u4)])
    ctf = Ctf.load(w.blob())
    assert ctf.offsetof("struct vm_exit", "vee") == 0
    assert ctf.offsetof("struct vm_exit", "mode") == w.layout_of(s)["mode"] == 8
    e = ctf.find("enum vmm_mode")
    assert e.enumerators == (("VMM_MODE_UNKNOWN", 0), ("VMM_MODE_EPT", 1), ("VMM_MODE_RVI", 2))
    assert ctf.sizeof(e) == 4 and ctf.is_signed(e)
    assert set(ctf.member_names("struct vm_exit")) == {"vei", "vee", "mode", "cpl"}


def test_missing_member_names_it_and_close_names() -> None:
    w, _t = kernelish()
    ctf = Ctf.load(w.blob())
    with pytest.raises(CtfError, match=r"struct vm has no member 'vm_pmapp'.*vm_pmap"):
        ctf.offsetof("struct vm", "vm_pmapp")
    with pytest.raises(CtfError, match="out of bounds"):
        ctf.offsetof("struct vm", "vm_memranges[16]")
    with pytest.raises(CtfError, match="no type 'struct vmm_softc'"):
        ctf.find("struct vmm_softc")
    with pytest.raises(CtfError, match="not a struct or union"):
        ctf.offsetof("struct vm", "vm_id.x")


def test_uncompressed_and_malformed_sections() -> None:
    w, _t = kernelish()
    assert Ctf.load(w.blob(compress=False)).sizeof("struct vm") == \
        Ctf.load(w.blob()).sizeof("struct vm")
    blob = w.blob()
    with pytest.raises(CtfError, match="magic"):
        Ctf.load(b"\0\0" + blob[2:])
    with pytest.raises(CtfError, match="version 4 is not supported"):
        Ctf.load(blob[:2] + b"\x04" + blob[3:])
    with pytest.raises(CtfError, match="inflate"):
        Ctf.load(blob[:40] + b"garbage")
    with pytest.raises(CtfError, match="shorter than its header"):
        Ctf.load(blob[:20])
    raw = w.blob(compress=False)
    hdr = list(struct.unpack_from("<HBB8I", raw))
    hdr[10] += 1000                                    # strlen past the end
    with pytest.raises(CtfError, match="beyond the body"):
        Ctf.load(struct.pack("<HBB8I", *hdr) + raw[36:])


def test_freebsd_flavour_bytes_and_child_container() -> None:
    parent, t = kernelish("freebsd")
    assert Ctf.load(parent.blob(), flavour="freebsd").sizeof("unsigned") == 8
    child = CtfWriter("freebsd", parent_name="kernel", parent=parent)
    vmspace = child.forward("struct vmspace")
    softc = child.struct("struct vmmdev_softc", [("vm", t["pvm"]), ("flags", t["signed"]),
                                                 ("vmspace", child.ptr(vmspace))])
    assert softc > 0x8000
    ctf = Ctf.load(child.blob(), flavour="freebsd", parent=parent.blob())
    assert ctf.offsetof("struct vmmdev_softc", "flags") == child.layout_of(softc)["flags"]
    vm = ctf.pointee(ctf.member_type("struct vmmdev_softc", "vm"))
    assert vm is not None and vm.layer == 1 and ctf.sizeof(vm) == parent.size_of(t["vm"])
    assert ctf.find("struct vmspace").kind == Kind.FORWARD
    with pytest.raises(CtfError, match="child of 'kernel'"):
        Ctf.load(child.blob(), flavour="freebsd")


def kernelish_v3(parent_name: str = "", parent: CtfWriter | None = None
                 ) -> tuple[CtfWriter, dict[str, int]]:
    """FreeBSD 14 types in CTF version 3: bhyve's vmmdev_softc over a struct vm."""
    w = CtfWriter("freebsd", parent_name=parent_name, parent=parent, version=3)
    t: dict[str, int] = {}
    t["u64"] = w.int_("unsigned long", 8)
    t["int"] = w.int_("int", 4, signed=True)
    t["char"] = w.int_("char", 1, signed=True)
    t["vm"] = w.declare("struct vm")
    t["softc"] = w.struct("struct vmmdev_softc", [("vm", w.ptr(t["vm"])), ("flags", t["int"])])
    w.struct("struct vm", [("cookie", w.ptr(0)), ("pad", w.array(t["u64"], 40)),
                           ("name", w.array(t["char"], 32)), ("maxcpus", t["int"])],
             define=t["vm"])
    return w, t


def test_freebsd_version_3_layouts_and_ids() -> None:
    """CTF version 3 (FreeBSD 14+): 32-bit records, ids, offsets; read by the same reader."""
    w, t = kernelish_v3()
    blob = w.blob()
    assert blob[2] == 3
    ctf = Ctf.load(blob, flavour="freebsd")
    lay = w.layout_of(t["vm"])
    for name in ("cookie", "pad", "name", "maxcpus"):
        assert ctf.offsetof("struct vm", name) == lay[name]
    assert ctf.sizeof("struct vm") == w.size_of(t["vm"])
    vm = ctf.pointee(ctf.member_type("struct vmmdev_softc", "vm"))
    assert vm is not None and vm.describe() == "struct vm"
    raw = zlib.decompress(blob[36:])
    _name, info, size = struct.unpack_from("<III", raw, 0)      # type 1: "unsigned long"
    assert (info >> 26, info & 0xFFFFFF, size) == (Kind.INTEGER, 0, 8)
    # the same bytes read as version 2 are not these types: the version matters
    with pytest.raises(CtfError):
        Ctf.load(blob[:2] + b"\x02" + blob[3:], flavour="freebsd").offsetof("struct vm", "name")


def test_version_3_long_members_and_child_ids() -> None:
    parent, t = kernelish_v3()
    child = CtfWriter("freebsd", parent_name="kernel", parent=parent, version=3)
    big = child.array(t["u64"], 70000)           # bit offsets beyond 16 bits, short members
    s = child.struct("struct vmm_big", [("pad", big), ("vm", child.ptr(t["vm"])),
                                        ("flags", t["int"])])
    assert s > 0x8000_0000
    ctf = Ctf.load(child.blob(), flavour="freebsd", parent=parent.blob())
    assert ctf.offsetof("struct vmm_big", "flags") == child.layout_of(s)["flags"] == 560008
    assert ctf.sizeof(ctf.member_type("struct vmm_big", "pad")) == 560000
    vm = ctf.pointee(ctf.member_type("struct vmm_big", "vm"))
    assert vm is not None and vm.layer == 1 and ctf.sizeof(vm) == parent.size_of(t["vm"])


def test_kernel_reader_works_over_ctf() -> None:
    """linux_kvm_common.KernelReader reads typed members through the CTF reader."""
    w, t = kernelish()
    ctf = Ctf.load(w.blob())
    lay = w.layout_of(t["vm"])
    mem = DictMem(size=1 << 20)
    vm = 0x3000
    mem.write(vm + lay["vm_creator_pid"], struct.pack("<i", -5))
    mem.write(vm + lay["vm_id"], struct.pack("<I", 0xFFFFFFF0))
    k = KernelReader(mem, ctf)
    assert k.field(vm, "struct vm", "vm_creator_pid") == -5
    assert k.field(vm, "struct vm", "vm_id") == 0xFFFFFFF0
    assert k.has("struct vm", "vm_link") and not k.has("struct vm", "vm_map")


@st.composite
def layouts(draw: st.DrawFn) -> list[tuple[str, int, int]]:
    """Members as (name, size in bytes, array length)."""
    n = draw(st.integers(1, 12))
    return [(f"m{i}", draw(st.sampled_from([1, 2, 4, 8])), draw(st.integers(1, 40)))
            for i in range(n)]


@settings(max_examples=60, deadline=None)
@given(layouts(), st.booleans())
def test_random_layouts_agree_with_the_writer(members: list[tuple[str, int, int]],
                                              compress: bool) -> None:
    w = CtfWriter()
    ints = {n: w.int_(f"u{n}", n) for n in (1, 2, 4, 8)}
    mtypes = [(name, ints[size] if count == 1 else w.array(ints[size], count))
              for name, size, count in members]
    s = w.struct("struct r", mtypes)
    ctf = Ctf.load(w.blob(compress))
    assert ctf.sizeof("struct r") == w.size_of(s)
    for name, _size, _count in members:
        assert ctf.offsetof("struct r", name) == w.layout_of(s)[name]


@pytest.mark.skipif(not shutil.which("objcopy") or not shutil.which("cc"),
                    reason="needs cc and objcopy to build a small ELF")
def test_ctf_section_from_an_elf(tmp_path: Path) -> None:
    """``.SUNW_ctf`` is found in an ELF the way ctfstrip adds it (objcopy --add-section)."""
    w, t = kernelish()
    (tmp_path / "ctf.bin").write_bytes(w.blob())
    (tmp_path / "k.c").write_text("int vmm_softc;\n")
    subprocess.run(["cc", "-c", "-o", str(tmp_path / "k.o"), str(tmp_path / "k.c")],
                   check=True)
    subprocess.run(["objcopy", "--add-section", f".SUNW_ctf={tmp_path / 'ctf.bin'}",
                    str(tmp_path / "k.o"), str(tmp_path / "bsd")], check=True)
    elf = (tmp_path / "bsd").read_bytes()
    assert ctf_section(elf) == w.blob()
    assert Ctf.from_elf(elf).offsetof("struct vm", "vm_link") == w.layout_of(t["vm"])["vm_link"]
    with pytest.raises(CtfError, match="no .SUNW_ctf"):
        ctf_section((tmp_path / "k.o").read_bytes())
    with pytest.raises(CtfError, match="not an ELF"):
        ctf_section(b"not an elf at all" * 4)


@pytest.mark.skipif(not shutil.which("objcopy") or not shutil.which("cc"),
                    reason="needs cc and objcopy to build a small ELF")
def test_symbols_from_the_elf_symbol_table(tmp_path: Path) -> None:
    """vmm_softc's address from .symtab, as the kernel's /bsd.booted gives it."""
    (tmp_path / "k.c").write_text("long pad[3] = {1, 2, 3};\nvoid *vmm_softc = 0;\n"
                                  "extern int undefined_here;\n"
                                  "int *use(void) { return &undefined_here; }\n")
    subprocess.run(["cc", "-c", "-o", str(tmp_path / "k.o"), str(tmp_path / "k.c")],
                   check=True)
    elf = (tmp_path / "k.o").read_bytes()
    nm = subprocess.run(["nm", str(tmp_path / "k.o")], capture_output=True, text=True,
                        check=True).stdout
    want = next(int(line.split()[0], 16) for line in nm.splitlines()
                if line.endswith(" vmm_softc"))
    assert elf_symbols(elf, ["vmm_softc"]) == {"vmm_softc": want}
    with pytest.raises(SymbolError, match="not defined.*undefined_here, vm_list"):
        elf_symbols(elf, ["vmm_softc", "vm_list", "undefined_here"])
    with pytest.raises(SymbolError, match="not an ELF"):
        elf_symbols(b"\0" * 64, ["x"])
