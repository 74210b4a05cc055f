"""The BTF reader on small BTF blobs built by an independent encoder (below)."""

from __future__ import annotations

import bz2
import gzip
import lzma
import shutil
import struct
import subprocess
from pathlib import Path
from typing import Any

import pytest

from harness.btf import Btf, BtfError, Kind
from harness.errors import InfraError
from harness.kernel_image import btf_section, extract_vmlinux

# -- a tiny BTF encoder, written from Documentation/bpf/btf.rst -------------------


class BtfBuilder:
    """Builds a BTF blob; with *base*, a split blob continuing its ids and strings."""

    def __init__(self, base: BtfBuilder | None = None) -> None:
        self.base = base
        self.recs: list[bytes] = []
        self.strings = bytearray(b"" if base else b"\0")
        self.str_base = len(base.strings) if base else 0
        self.first_id = base.next_id() if base else 1
        self._str_cache: dict[str, int] = {}

    def next_id(self) -> int:
        """The id the next type will get."""
        return self.first_id + len(self.recs)

    def s(self, name: str) -> int:
        """String offset of *name* (the empty string is offset 0 of the base)."""
        if not name:
            return 0
        if self.base and name in self.base._str_cache:
            return self.base._str_cache[name]
        if name not in self._str_cache:
            self._str_cache[name] = self.str_base + len(self.strings)
            self.strings += name.encode() + b"\0"
        return self._str_cache[name]

    def add(self, kind: int, name: str, vlen: int, size_or_type: int, extra: bytes = b"",
            kflag: int = 0) -> int:
        """Append one btf_type record; returns its id."""
        info = (kflag << 31) | (kind << 24) | vlen
        self.recs.append(struct.pack("<III", self.s(name), info, size_or_type) + extra)
        return self.next_id() - 1

    def int_(self, name: str, size: int, signed: bool = False) -> int:
        """BTF_KIND_INT, encoding SIGNED when *signed*."""
        return self.add(Kind.INT, name, 0, size,
                        struct.pack("<I", (int(signed) << 24) | (size * 8)))

    def ptr(self, ref: int) -> int:
        return self.add(Kind.PTR, "", 0, ref)

    def array(self, elem: int, nelems: int, index_type: int) -> int:
        return self.add(Kind.ARRAY, "", 0, 0, struct.pack("<III", elem, index_type, nelems))

    def struct(self, name: str, size: int, members: list[tuple], union: bool = False,
               kflag: int = 0) -> int:
        """members: (name, type id, bit offset[, bitfield size]) tuples."""
        extra = b""
        for m in members:
            name_, tid, bits = m[:3]
            off = ((m[3] << 24) | bits) if kflag else bits
            extra += struct.pack("<III", self.s(name_), tid, off)
        return self.add(Kind.UNION if union else Kind.STRUCT, name, len(members), size, extra,
                        kflag)

    def ref(self, kind: int, ref: int, name: str = "") -> int:
        """TYPEDEF, VOLATILE, CONST, RESTRICT, TYPE_TAG, FUNC."""
        return self.add(kind, name, 0, ref)

    def encode(self) -> bytes:
        """Header + type section + string section."""
        types = b"".join(self.recs)
        hdr = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(types), len(types),
                          len(self.strings))
        return hdr + types + bytes(self.strings)


def struct_of(b: BtfBuilder, name: str, size: int, fields: dict[str, tuple[int, int]]) -> int:
    """A struct from {member: (byte offset, type id)}."""
    return b.struct(name, size, [(n, t, off * 8) for n, (off, t) in fields.items()])


# -- fixtures ------------------------------------------------------------------


@pytest.fixture()
def every_kind() -> tuple[Btf, dict[str, int]]:
    """A blob with every kind, so that a wrong record length shifts later ids."""
    b = BtfBuilder()
    ids: dict[str, int] = {}
    u32 = ids["u32"] = b.int_("unsigned int", 4)
    s16 = b.int_("short int", 2, signed=True)
    u64 = b.int_("long long unsigned int", 8)
    b.add(Kind.ENUM, "mode", 2, 4,
          struct.pack("<Ii", b.s("A"), 0) + struct.pack("<Ii", b.s("B"), -1))
    b.add(Kind.FWD, "later", 0, 0)
    proto = b.add(Kind.FUNC_PROTO, "", 2, u32, struct.pack("<II", b.s("x"), u32) +
                  struct.pack("<II", 0, u64))
    b.ref(Kind.FUNC, proto, "f")
    var = b.add(Kind.VAR, "v", 0, u32, struct.pack("<I", 1))
    b.add(Kind.DATASEC, ".data", 1, 4, struct.pack("<III", var, 0, 4))
    b.add(Kind.FLOAT, "double", 0, 8)
    b.add(Kind.DECL_TAG, "tag", 0, var, struct.pack("<i", -1))
    tagged = b.ref(Kind.TYPE_TAG, u64, "user")
    b.add(Kind.ENUM64, "big", 1, 8, struct.pack("<III", b.s("C"), 1, 2))
    vol = b.ref(Kind.VOLATILE, u32)
    cst = b.ref(Kind.CONST, vol)
    td = ids["td"] = b.ref(Kind.TYPEDEF, cst, "u32_t")
    arr = b.array(s16, 3, u32)
    inner = b.struct("", 8, [("lo", u32, 0), ("hi", u32, 32)], union=False)
    uni = b.struct("", 8, [("whole", u64, 0), ("", inner, 0)], union=True)
    rest = b.ref(Kind.RESTRICT, b.ptr(0))
    ids["s"] = b.struct("s", 48, [("a", td, 0), ("b", arr, 32), ("", uni, 128),
                                  ("p", rest, 192), ("t", tagged, 256), ("c", s16, 320)])
    ids["bits"] = b.struct("bits", 4, [("x", u32, 0, 3), ("y", u32, 3, 5), ("z", u32, 8, 0)],
                           kflag=1)
    return Btf.load(b.encode()), ids


# -- tests ---------------------------------------------------------------------


def test_offsets_through_every_kind(every_kind: tuple[Btf, dict[str, int]]) -> None:
    btf, ids = every_kind
    assert btf.find("struct s").id == ids["s"]
    assert btf.offsetof("struct s", "a") == 0
    assert btf.offsetof("struct s", "b") == 4
    assert btf.offsetof("struct s", "b[2]") == 4 + 2 * 2
    assert btf.offsetof("struct s", "whole") == 16          # inside the anonymous union
    assert btf.offsetof("struct s", "hi") == 20             # anonymous union > anonymous struct
    assert btf.offsetof("struct s", "p") == 24
    assert btf.offsetof("struct s", "c") == 40
    assert btf.sizeof("struct s") == 48
    assert btf.sizeof("u32_t") == 4                         # typedef > const > volatile
    assert btf.sizeof(btf.member_type("struct s", "b")) == 6
    assert btf.sizeof(btf.member_type("struct s", "p")) == 8
    assert btf.sizeof(btf.member_type("struct s", "t")) == 8    # type tag skipped
    assert btf.is_signed(btf.member_type("struct s", "c"))
    assert not btf.is_signed(btf.member_type("struct s", "a"))
    assert btf.find("enum mode").size == 4 and btf.find("enum big").kind == Kind.ENUM64


def test_bitfields_with_kind_flag(every_kind: tuple[Btf, dict[str, int]]) -> None:
    btf, _ = every_kind
    assert btf.member("struct bits", "y")[:2] == (3, 5)
    assert btf.offsetof("struct bits", "z") == 1
    with pytest.raises(BtfError, match="bitfield"):
        btf.offsetof("struct bits", "y")


def test_errors_name_struct_member_and_close_names(every_kind: tuple[Btf, dict[str, int]]
                                                   ) -> None:
    btf, _ = every_kind
    with pytest.raises(BtfError, match=r"struct s has no member 'whol'.*close names: whole"):
        btf.offsetof("struct s", "whol")
    with pytest.raises(BtfError, match="no type 'struct t'"):
        btf.find("struct t")
    with pytest.raises(BtfError, match="not an array"):
        btf.offsetof("struct s", "a[1]")
    with pytest.raises(BtfError, match="out of bounds"):
        btf.offsetof("struct s", "b[3]")
    with pytest.raises(BtfError, match="not a struct or union"):
        btf.offsetof("struct s", "a.x")


def test_rejects_non_btf() -> None:
    with pytest.raises(BtfError, match="not BTF"):
        Btf.load(b"\0" * 32)
    with pytest.raises(BtfError, match="shorter"):
        Btf.load(b"\x9f\xeb")


def test_split_btf_continues_ids_and_strings() -> None:
    """Two modules split on the same base: their ids overlap, each resolves in its own."""
    base = BtfBuilder()
    u64 = base.int_("long unsigned int", 8)
    lh = base.struct("list_head", 16, [("next", u64, 0), ("prev", u64, 64)])
    base.add(Kind.FWD, "kvm", 0, 0)
    kvm_mod = BtfBuilder(base)
    pid = kvm_mod.ref(Kind.TYPEDEF, u64, "pid_t")
    kvm_mod.struct("kvm", 64, [("pad", u64, 0), ("vm_list", lh, 64), ("userspace_pid", pid, 256)])
    amd_mod = BtfBuilder(base)
    info = amd_mod.struct("kvm_vmcb_info", 16, [("ptr", u64, 0), ("pa", u64, 64)])
    amd_mod.struct("vcpu_svm", 0x100, [("vcpu", u64, 0), ("vmcb01", info, 0x80 * 8)])
    assert kvm_mod.first_id == amd_mod.first_id == base.next_id()
    btf = Btf.load(base.encode(), [kvm_mod.encode(), amd_mod.encode()])
    assert btf.offsetof("struct kvm", "vm_list") == 8          # not the base FWD
    assert btf.offsetof("struct kvm", "vm_list.prev") == 16    # base type from a split
    assert btf.offsetof("struct vcpu_svm", "vmcb01.pa") == 0x88   # ids resolved in layer 2
    assert btf.sizeof(btf.member_type("struct kvm", "userspace_pid")) == 8
    assert btf.find("struct kvm").layer == 1 and btf.find("struct vcpu_svm").layer == 2


# -- kernel_image: vmlinux and .BTF out of a bzImage-like file --------------------


def _elf_with_btf(tmp_path: Path, blob: bytes) -> bytes:
    """A relocatable ELF with a .BTF section, made by the host toolchain."""
    if not (shutil.which("gcc") and shutil.which("objcopy")):
        pytest.skip("needs gcc and objcopy")
    (tmp_path / "x.c").write_text("int x;\n")
    (tmp_path / "btf").write_bytes(blob)
    subprocess.run(["gcc", "-c", "-o", str(tmp_path / "x.o"), str(tmp_path / "x.c")], check=True)
    subprocess.run(["objcopy", "--add-section", f".BTF={tmp_path / 'btf'}",
                    str(tmp_path / "x.o")], check=True)
    return (tmp_path / "x.o").read_bytes()


def _zstd(data: bytes) -> bytes:
    if not shutil.which("zstd"):
        pytest.skip("needs the zstd tool")
    return subprocess.run(["zstd", "-q", "-c"], input=data, capture_output=True,
                          check=True).stdout


@pytest.mark.parametrize("compress", [gzip.compress, lzma.compress, bz2.compress, _zstd],
                         ids=["gzip", "xz", "bzip2", "zstd"])
def test_extract_vmlinux_skips_decoys_and_finds_the_elf(tmp_path: Path, compress: Any) -> None:
    b = BtfBuilder()
    b.struct("kvm", 8, [])
    elf = _elf_with_btf(tmp_path, b.encode())
    decoy = gzip.compress(b"not an elf, but gzip")
    image = b"MZ" + bytes(0x200) + b"\x1f\x8b\x08 junk" + decoy + compress(elf) + bytes(64)
    vmlinux = extract_vmlinux(image)
    assert vmlinux == elf
    assert Btf.load(btf_section(vmlinux)).sizeof("struct kvm") == 8


def test_extract_vmlinux_without_payload_raises() -> None:
    with pytest.raises(InfraError, match="no compressed payload"):
        extract_vmlinux(b"MZ" + bytes(4096) + gzip.compress(b"text"))


def test_btf_section_missing_or_not_elf(tmp_path: Path) -> None:
    with pytest.raises(InfraError, match="not an ELF"):
        btf_section(b"hello")
    if not shutil.which("gcc"):
        pytest.skip("needs gcc")
    (tmp_path / "y.c").write_text("int y;\n")
    subprocess.run(["gcc", "-c", "-o", str(tmp_path / "y.o"), str(tmp_path / "y.c")], check=True)
    with pytest.raises(InfraError, match="no .BTF section"):
        btf_section((tmp_path / "y.o").read_bytes())



def _executable(tmp_path: Path, notes: str) -> bytes:
    """A static x86-64 executable whose allocated notes are *notes* (assembler text)."""
    if not shutil.which("gcc") or subprocess.run(["gcc", "-dumpmachine"], capture_output=True,
                                                 text=True).stdout.split("-")[0] != "x86_64":
        pytest.skip("needs an x86-64 gcc")
    src = tmp_path / "n.S"
    src.write_text('.pushsection .note.Xen,"a",@note\n' + notes + ".popsection\n"
                   ".text\n.globl _start\n_start: ret\n")
    subprocess.run(["gcc", "-nostdlib", "-static", "-o", str(tmp_path / "n"), str(src)],
                   check=True)
    return (tmp_path / "n").read_bytes()


def _note(name: str, n_type: int, desc: int) -> str:
    return (f".balign 4\n.long {len(name) + 1}\n.long 4\n.long {n_type}\n"
            f'.asciz "{name}"\n.balign 4\n.long {desc:#x}\n')


def test_pvh_entry_is_the_xen_phys32_note(tmp_path: Path) -> None:
    """Read against the linker's own output: the entry of note type 18 named Xen, and
    none when the only notes are other types or other names."""
    from harness.kernel_image import pvh_entry
    both = _executable(tmp_path, _note("Xen", 6, 0x61) + _note("GNU", 18, 0x2000)
                       + _note("Xen", 18, 0x1000850))
    readelf = subprocess.run(["readelf", "-n", str(tmp_path / "n")], capture_output=True,
                             text=True).stdout
    assert "Xen" in readelf           # the notes are really in a PT_NOTE segment
    assert pvh_entry(both) == 0x1000850
    assert pvh_entry(_executable(tmp_path, _note("Xen", 6, 0x61) + _note("GNU", 18, 1))) is None
    assert pvh_entry(both[:0x40]) is None and pvh_entry(b"MZ" + bytes(100)) is None


def test_an_entry_pvh_image_boots_vmlinux_only_when_it_has_the_entry(tmp_path: Path) -> None:
    """The builder writes the uncompressed vmlinux for ``entry: pvh`` and the image boots
    it; a kernel without the note, or ``entry: image``, boots the packaged bzImage."""
    from dataclasses import replace

    from harness.images import build as build_mod
    from harness.images import load_recipe
    with_entry = _executable(tmp_path, _note("Xen", 18, 0x1000850))
    recipe = load_recipe("linux-amd64")
    assert recipe.entry == "pvh"
    for elf, entry, want in ((with_entry, "pvh", "pvh"), (with_entry, "image", "image"),
                             (_executable(tmp_path, _note("Xen", 6, 1)), "pvh", "image")):
        out = tmp_path / f"out-{entry}-{want}"
        out.mkdir()
        (out / "vmlinuz").write_bytes(b"MZ" + bytes(0x200) + gzip.compress(elf))
        said: list[str] = []
        got = build_mod._write_entry(replace(recipe, entry=entry), out, said.append)
        assert got == want
        assert ((out / build_mod.VMLINUX).read_bytes() == elf) if want == "pvh" \
            else not (out / build_mod.VMLINUX).exists()
        assert bool(said) == (entry == "pvh" and want == "image")   # the fallback is said
        if entry == "pvh":
            assert "CONFIG_PVH" in "".join(said) or want == "pvh"


@pytest.mark.parametrize(("extra", "error"), [
    ("entry: pvhh\n", "entry: 'pvhh' is not one of image, pvh"),
    ("entry: pvh\niso: {}\n", "entry: pvh needs arch x86_64 and no iso"),
])
def test_a_bad_entry_names_the_recipe_and_the_choices(extra: str, error: str) -> None:
    from harness.images import load_recipe, parse_recipe
    text = load_recipe("linux-amd64").path.read_text().replace("\nentry: pvh\n", "\n")
    assert parse_recipe(text, "r.yaml").entry == "image"
    with pytest.raises(InfraError, match=f"r.yaml: {error}"):
        parse_recipe(text + extra, "r.yaml")


def test_the_boot_image_is_decompressed_once_and_a_kernel_without_btf_is_refused(
        tmp_path: Path) -> None:
    """The builder reads the types from the decompressed boot image and hands that ELF on
    to the PVH entry (one decompression); a kernel without BTF is refused (a scenario
    error, KernelRefused), before any entry is written."""
    from harness.images import build as build_mod
    from harness.images.kernel import KernelFiles, KernelRefused
    b = BtfBuilder()
    b.struct("kvm", 8, [])
    elf = _elf_with_btf(tmp_path, b.encode())
    for name, payload in (("with", elf), ("without", _executable(tmp_path, _note("Xen", 6, 1)))):
        (tmp_path / name).mkdir()
        (tmp_path / name / "vmlinuz").write_bytes(b"MZ" + bytes(0x200) + gzip.compress(payload))
    files = KernelFiles("boot-image", tmp_path / "with" / "vmlinuz", "6.1", "", None, None, {})
    assert build_mod._vmlinux_btf(files, tmp_path / "with") == elf
    assert Btf.load((tmp_path / "with" / "vmlinux.btf").read_bytes()).sizeof("struct kvm") == 8
    bad = KernelFiles("boot-image", tmp_path / "without" / "vmlinuz", "6.1", "", None, None, {})
    with pytest.raises(KernelRefused, match="carries no BTF"):
        build_mod._vmlinux_btf(bad, tmp_path / "without")
