"""vmd's create_memory_map() against the table of REFERENCE.md 1.8, and cross_check()."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from harness.models.base import MemRange
from harness.models.vmd_memmap import create_memory_map, cross_check

MB, GB = 1 << 20, 1 << 30


def spans(mem: int) -> list[tuple[int, int, str]]:
    return [(r.gpa, r.end, r.kind) for r in create_memory_map(mem)]


def test_256m_gives_five_ranges() -> None:
    assert spans(256 * MB) == [
        (0x0, 0xA0000, "ram"),
        (0xA0000, 0x100000, "reserved"),
        (0x100000, 0x10000000, "ram"),
        (0xF0000000, 0xFFE00000, "mmio"),
        (0xFFE00000, 0x100000000, "reserved"),
    ]


def test_4g_splits_above_4g() -> None:
    got = spans(4 * GB)
    assert len(got) == 6
    assert got[2] == (0x100000, 0xF0000000, "ram")
    # 4 GiB total: 1 MiB below, 0xEFF00000 up to the hole, the rest above 4 GiB
    assert got[5] == (4 * GB, 4 * GB + (4 * GB - MB - 0xEFF00000), "ram")


def test_boundary_of_the_fourth_gig() -> None:
    assert len(spans(0xF0000000)) == 5
    assert spans(0xF0000000 + 0x1000)[5] == (4 * GB, 4 * GB + 0x1000, "ram")


def test_small_vm_quirk() -> None:
    for mem in (2 * MB, 3 * MB):
        got = create_memory_map(mem)
        assert [(r.gpa, r.size, r.kind) for r in got][2] == (0xFFDFFFFF, 2 * MB, "reserved")
        assert len(got) == 3
    assert len(spans(3 * MB + 0x1000)) == 5


def test_no_ranges_for_zero_or_too_big() -> None:
    assert create_memory_map(0) == []
    assert create_memory_map(128 * GB + 1) == []
    assert len(create_memory_map(128 * GB)) == 6


@given(st.integers(min_value=4, max_value=128 * 1024).map(lambda n: n * MB))
def test_ranges_are_ascending_aligned_and_sum_to_size(mem: int) -> None:
    got = create_memory_map(mem)
    assert all(a.end <= b.gpa for a, b in zip(got, got[1:], strict=False))
    assert all(r.gpa % 4096 == 0 and r.size % 4096 == 0 for r in got)
    assert sum(r.size for r in got if r.kind != "mmio" and r.gpa != 0xFFE00000) == mem


def test_cross_check() -> None:
    pred = create_memory_map(256 * MB)
    assert cross_check(pred, list(pred)) == []
    live = [*pred[:2], MemRange(0x100000, 0xFF00000 - 0x1000, kind="ram"), *pred[3:]]
    assert cross_check(pred, live) == ["vm_memranges[2].size is 0xfeff000, predicted 0xff00000"]
    short = cross_check(pred, pred[:4])
    assert short == ["vm_nmemranges is 4, predicted 5"]
    kinds = cross_check(pred, [*pred[:3], MemRange(0xF0000000, 0xFE00000, kind="ram"),
                               pred[4]])
    assert kinds == ["vm_memranges[3].kind is ram, predicted mmio"]
