"""The DWARF type reader against the compiler's own offsetof/sizeof (the oracle).

``tests/data/dwarf/vm_types.c`` declares DragonFly-shaped structs (RB entries,
anonymous unions, a union of the map entry's aux data, bitfields, 2-D and
flexible arrays, typedef chains) and prints what gcc lays out; the reader must
find the same numbers in the DWARF gcc wrote, for DWARF 2, 4 and 5.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from harness.ctf import CtfError, Kind
from harness.discovery.linux_kvm_common import KernelReader
from harness.dwarf import Dwarf, DwarfError, dwarf_subset, subset_to_json, types_from_json
from harness.mem import DictMem

SOURCE = Path(__file__).resolve().parents[1] / "data" / "dwarf" / "vm_types.c"
pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")


def build(tmp: Path, version: int) -> tuple[bytes, dict[str, int], dict[str, tuple[int, int]]]:
    """The ELF, its offsets and sizes ("vmspace vm_flags" -> n) and bitfields, per gcc."""
    exe = tmp / f"vm_types-{version}"
    flags = ["-gstrict-dwarf"] if version == 2 else []
    subprocess.run(["gcc", f"-gdwarf-{version}", *flags, "-O0", "-o", str(exe), str(SOURCE)],
                   check=True)
    out = subprocess.run([str(exe)], capture_output=True, text=True, check=False).stdout
    plain: dict[str, int] = {}
    bits: dict[str, tuple[int, int]] = {}
    for line in out.splitlines():
        words = line.split()
        if words[2] == "bits":
            bits[words[1]] = (int(words[3]), int(words[4]))
        else:
            plain[f"{words[0]} {words[1]}"] = int(words[2])
    return exe.read_bytes(), plain, bits


@pytest.fixture(scope="module", params=[2, 4, 5])
def compiled(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
             ) -> tuple[Dwarf, dict[str, int], dict[str, tuple[int, int]]]:
    elf, plain, bits = build(tmp_path_factory.mktemp("dwarf"), request.param)
    return Dwarf.load_elf(elf), plain, bits


def test_offsets_and_sizes_agree_with_the_compiler(
        compiled: tuple[Dwarf, dict[str, int], dict[str, tuple[int, int]]]) -> None:
    types, plain, _bits = compiled
    assert len(plain) == 25
    for key, want in plain.items():
        name, path = key.split(" ", 1)
        got = types.sizeof(f"struct {name}") if path == "sizeof" else \
            types.offsetof(f"struct {name}", path)
        assert got == want, key


def test_bitfields_are_reported_not_read_as_bytes(
        compiled: tuple[Dwarf, dict[str, int], dict[str, tuple[int, int]]]) -> None:
    types, plain, bits = compiled
    base = plain["vmspace vm_pmap"]
    for name, (first, width) in bits.items():
        off, size, _t = types.member("struct pmap", name)
        assert (off, size) == (first, width), name
        assert types.member("struct vmspace", f"vm_pmap.{name}")[0] == 8 * base + first
    with pytest.raises(CtfError, match="bitfield"):
        types.offsetof("struct pmap", "pm_type")


def test_types_signedness_pointers_arrays(
        compiled: tuple[Dwarf, dict[str, int], dict[str, tuple[int, int]]]) -> None:
    types, _plain, _bits = compiled
    assert types.is_signed(types.member_type("struct vmspace", "vm_small"))
    assert not types.is_signed(types.member_type("struct vm_map_entry", "maptype"))
    assert types.sizeof(types.member_type("struct vm_map_entry", "maptype")) == 1
    assert types.sizeof(types.member_type("struct vmspace", "vm_exiting")) == 1
    assert types.sizeof(types.member_type("struct vm_map_entry", "id")) == 4
    pml4 = types.pointee(types.member_type("struct pmap", "pm_pml4"))
    assert pml4 is not None and pml4.kind == Kind.INTEGER and pml4.size == 8
    pmap = types.pointee(types.member_type("struct vm_map_entry", "ba.pmap"))
    assert pmap is not None and pmap.describe() == "struct pmap" and not pmap.incomplete
    assert types.pointee(types.member_type("struct vm_map_entry", "aux.map_aux")) is None
    fn = types.pointee(types.member_type("struct vm_map_entry", "ba.uksmap"))
    assert fn is not None and fn.kind == Kind.FUNCTION
    grid = types.member_type("struct pmap", "pm_pml4_phys")
    assert types.sizeof(grid) == 48 and types.sizeof(types.member_type(
        "struct pmap", "pm_pml4_phys[1]")) == 24
    assert types.resolve(types.member_type("struct vmspace", "vm_tail")).nelems == 0
    assert types.find("vm_offset_t").kind == Kind.TYPEDEF
    assert set(types.member_names("struct vm_map_backing")) >= {"object", "sub_map", "offset"}
    with pytest.raises(CtfError, match=r"no member 'master_pd'.*master_pde"):
        types.offsetof("struct vm_map_entry", "aux.master_pd")
    with pytest.raises(CtfError, match="out of bounds"):
        types.offsetof("struct pmap", "pm_pml4_phys[2]")
    with pytest.raises(CtfError, match="no type 'struct vkernel'.*DWARF"):
        types.find("struct vkernel")


def test_subset_round_trips_through_json(
        compiled: tuple[Dwarf, dict[str, int], dict[str, tuple[int, int]]]) -> None:
    """The cached subset answers the lookups discovery makes, and nothing else is kept."""
    types, plain, _bits = compiled
    records = dwarf_subset(types, ["struct vm_map_entry"])
    stored = types_from_json(subset_to_json(records))
    for key, want in plain.items():
        name, path = key.split(" ", 1)
        if name in ("vm_map_entry", "vm_page"):          # vm_page: through ba.pmap
            got = stored.sizeof(f"struct {name}") if path == "sizeof" else \
                stored.offsetof(f"struct {name}", path)
            assert got == want, key
    assert stored.offsetof("struct pmap", "pm_count") == types.offsetof("struct pmap",
                                                                          "pm_count")
    with pytest.raises(CtfError, match="no type 'struct vmspace'"):
        stored.find("struct vmspace")            # not reachable from the root
    with pytest.raises(DwarfError, match="not 'slatcheck-types/1'"):
        types_from_json('{"format": "other", "types": []}')


def test_kernel_reader_reads_over_dwarf(
        compiled: tuple[Dwarf, dict[str, int], dict[str, tuple[int, int]]]) -> None:
    types, plain, _bits = compiled
    mem = DictMem(size=1 << 20)
    entry = 0x4000
    mem.write(entry + plain["vm_map_entry aux.master_pde"], struct.pack("<Q", 0x1003))
    mem.write(entry + plain["vm_map_entry maptype"], b"\x02")
    k = KernelReader(mem, types)
    assert k.field(entry, "struct vm_map_entry", "aux.master_pde") == 0x1003
    assert k.field(entry, "struct vm_map_entry", "maptype") == 2
    assert k.has("struct vm_map_entry", "ba.object") and not k.has("struct vm_map_entry",
                                                                     "object")


def test_not_an_elf_and_no_dwarf(tmp_path: Path) -> None:
    with pytest.raises(DwarfError, match="not an ELF"):
        Dwarf.load_elf(b"garbage" * 20)
    subprocess.run(["gcc", "-g0", "-c", "-o", str(tmp_path / "n.o"), str(SOURCE)], check=True)
    with pytest.raises(DwarfError, match="no .debug_info"):
        Dwarf.load_elf((tmp_path / "n.o").read_bytes())
