"""arm64 stage-2 end to end through the CLI, against the workload's own pagemap.

The oracle is the workload's ``@@SLAT`` pagemap lines (parsed here with json),
not the harness's parser; the scenario is the shipped VHE smoke one, whose
slots lie on both pages of the concatenated 40-bit root.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.boot

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "scenarios" / "linux" / "kvm-s2-smoke.yaml"
SECOND_ROOT_PAGE = 512 << 30          # IPAs from 512 GiB use the root's second page


def pagemap_oracle(out: Path) -> dict[int, int]:
    """GPA page -> L1 physical page, straight from the workload's @@SLAT pagemap lines."""
    pages: dict[int, int] = {}
    for line in out.read_text().splitlines():
        if line.startswith("@@SLAT "):
            ev = json.loads(line[len("@@SLAT "):])
            if ev.get("event") == "pagemap" and ev["vm"] == 0:
                for gpa, pfn, count in ev["runs"]:
                    pages.update({gpa + i * 4096: (pfn + i) * 4096
                                  for i in range(count) if pfn >= 0})
    return pages


def test_vhe_smoke_leaves_agree_with_guest_pagemap(tmp_path: Path) -> None:
    res = subprocess.run([sys.executable, "-m", "harness", "run", str(SMOKE),
                          "--artifacts", str(tmp_path)], cwd=ROOT, text=True,
                         capture_output=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    run = next(tmp_path.glob("kvm-s2-smoke*"))
    oracle = pagemap_oracle(run / "workload-w1.out")
    vm = json.loads((run / "slat.json").read_text())["checks"][0]["vms"][0]
    leaves = {int(m["gpa"], 16): m for m in vm["mappings"]}
    doc = yaml.safe_load(SMOKE.read_text())
    touches = [t["gpa"] for st in doc["steps"] if "workload" in st
               for t in st["workload"]["touch"]]
    for gpa in touches:
        assert int(leaves[gpa]["hpa"], 16) == oracle[gpa], hex(gpa)
    for gpa, leaf in leaves.items():
        assert int(leaf["hpa"], 16) == oracle[gpa] and leaf["size"] == "0x1000", hex(gpa)
    assert any(g >= SECOND_ROOT_PAGE for g in leaves) and any(g < SECOND_ROOT_PAGE
                                                              for g in leaves)
    disc = vm["discovery"]
    assert disc["root_pages"] == 2 and disc["stage2"]["ia_bits"] == 40
    assert disc["checks"]["VTTBR_EL2 BADDR == pgd_phys (last VM loaded)"] is True
    assert int(disc["VTTBR_EL2"], 16) & 0x0000FFFFFFFFFFFE == int(vm["root"], 16)


HUGE_SCENARIO = ROOT / "scenarios" / "linux" / "kvm-s2-huge.yaml"
BLOCK = 2 << 20


def test_vhe_huge_blocks_agree_with_guest_pagemap(tmp_path: Path) -> None:
    """kvm-s2-huge: 2 MiB blocks where THPs back the slot, frames per page against the
    pagemap, and XN read from the raw descriptors (bits 54:53): the block with an executed
    page is executable as a whole, the others are not."""
    res = subprocess.run([sys.executable, "-m", "harness", "run", str(HUGE_SCENARIO),
                          "--artifacts", str(tmp_path)], cwd=ROOT, text=True,
                         capture_output=True, timeout=900)
    assert res.returncode == 0, res.stdout + res.stderr
    run = next(tmp_path.glob("kvm-s2-huge*"))
    oracle = pagemap_oracle(run / "workload-w1.out")
    vm = json.loads((run / "slat.json").read_text())["checks"][0]["vms"][0]
    leaves = {}
    for m in vm["mappings"]:
        gpa, hpa, size = int(m["gpa"], 16), int(m["hpa"], 16), int(m["size"], 16)
        for off in range(0, size, 4096):
            assert oracle[gpa + off] == hpa + off, hex(gpa + off)
        leaves[gpa] = (size, (int(m["raw"], 16) >> 53) & 3 == 0)   # executable at EL1/EL0
    assert leaves[0x40000000] == (BLOCK, False)          # read only
    assert leaves[0x40200000] == (BLOCK, False)          # written
    assert leaves[0x40400000] == (BLOCK, True)           # one page executed
    assert leaves[0x8000000000] == (BLOCK, True)
    assert all(size == 4096 for gpa, (size, _) in leaves.items()
               if 0xC0000000 <= gpa < 0xC0200000 or 0x80200000 <= gpa < 0x80300000)
