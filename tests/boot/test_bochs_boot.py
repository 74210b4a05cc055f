"""Boots real Bochs: cleanup guarantees, and KVM's EPT on a live VMX L1 checked against
oracles the harness does not own.

Oracles: the workload's own ``/proc/self/pagemap`` report (parsed here with json),
Bochs's own debugger (the current VMCS's EPT pointer, recorded by discovery from
``show "cpu0.VMX"``, compared here with the root the walk started from), Bochs's own
log of EPT violations (every page the L2 touched faulted once; every faulted GPA in a
slot is mapped now), and the process table.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from harness.arch import ARCHES
from harness.machines.base import MachineConfig
from harness.machines.bochs import BOCHS, BochsMachine

pytestmark = [
    pytest.mark.boot,
    pytest.mark.skipif(shutil.which(BOCHS) is None, reason=f"{BOCHS} is not installed"),
]

ROOT = Path(__file__).resolve().parents[2]
LINUX = ROOT / "scenarios" / "linux"
SPTE_MMU_PRESENT = 1 << 11          # KVM's "present" bit (arch/x86/kvm/mmu/spte.h)
EPT_WRITABLE_SW = (1 << 57) | (1 << 58)   # EPT_SPTE_HOST_WRITABLE, EPT_SPTE_MMU_WRITABLE


def gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in "ZX"
    except OSError:
        return True


def wait_gone(pids: list[int], limit: float = 20.0) -> list[int]:
    deadline = time.monotonic() + limit
    while any(not gone(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    return [p for p in pids if not gone(p)]


def config(art: Path, name: str) -> MachineConfig:
    from harness.images import build_image
    image = build_image("linux-amd64-vmx", progress=lambda line: None)
    return MachineConfig(arch=ARCHES["x86_64"], boot=image.boot_spec(), artifacts=art,
                         cpu="max", memory=512 << 20, name=name)


# -- lifecycle: the BIOS is enough ----------------------------------------------------

@pytest.mark.usefixtures("sigint_raises")
def test_sigint_in_block_leaves_nothing_behind(tmp_path: Path) -> None:
    with pytest.raises(KeyboardInterrupt), BochsMachine(config(tmp_path, "sigint")) as m:
        assert m.pid is not None and m._dir is not None
        pid, private = m.pid, m._dir
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(5)       # not reached: the signal raises KeyboardInterrupt
    assert wait_gone([pid], limit=1.0) == [] and not private.exists()
    assert (tmp_path / "bochs-debugger.log").read_text().count("<bochs:") >= 2
    assert m.exitcode is not None


CHILD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from harness.arch import ARCHES
    from harness.images import build_image
    from harness.machines.base import MachineConfig
    from harness.machines.bochs import BochsMachine
    image = build_image("linux-amd64-vmx", progress=lambda line: None)
    cfg = MachineConfig(arch=ARCHES["x86_64"], boot=image.boot_spec(),
                        artifacts=Path(sys.argv[1]), cpu="max", memory=64 << 20, name="orphan")
    with BochsMachine(cfg) as m:
        print(m.pid, flush=True)
        time.sleep(600)
""")


def test_bochs_dies_with_a_killed_harness(tmp_path: Path) -> None:
    """Bochs dies with its harness; the private directory the killed harness could not
    remove is a scratch directory that the next run's sweep removes."""
    from harness.scratch import sweep_stale
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path)],
                             stdout=subprocess.PIPE, text=True, cwd=ROOT,
                             env={**os.environ, "TMPDIR": str(scratch)})
    try:
        line = child.stdout.readline()  # type: ignore[union-attr]
        pid = int(line)
        assert wait_gone([pid], limit=0.5) == [pid]          # alive
    finally:
        child.kill()
        child.wait()
    assert wait_gone([pid]) == []                             # PR_SET_PDEATHSIG
    [left] = scratch.iterdir()
    assert left.name.startswith("slc-bochs-orphan")
    assert sweep_stale(scratch) == [left] and not left.exists()


# -- KVM's EPT on the live L1 -------------------------------------------------------------

def slatcheck(*args: str, timeout: float = 3600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "harness", *args], cwd=ROOT, text=True,
                          capture_output=True, timeout=timeout)


def pagemap_oracle(out: Path, vm: int = 0) -> dict[int, int]:
    """GPA page -> L1 physical page, straight from the workload's @@SLAT pagemap lines."""
    pages: dict[int, int] = {}
    for line in out.read_text().splitlines():
        if line.startswith("@@SLAT "):
            ev = json.loads(line[len("@@SLAT "):])
            if ev.get("event") == "pagemap" and ev["vm"] == vm:
                for gpa, pfn, count in ev["runs"]:
                    for i in range(count):
                        if pfn >= 0:
                            pages[gpa + i * 4096] = (pfn + i) * 4096
    return pages


def scenario_touches(scenario: Path) -> tuple[list[int], list[tuple[int, int]]]:
    doc = yaml.safe_load(scenario.read_text())
    (wl,) = [st["workload"] for st in doc["steps"] if "workload" in st]
    return [t["gpa"] for t in wl["touch"]], [(s["gpa"], s["gpa"] + int(s["size"][:-1]) * 1024)
                                             for s in wl["slots"]]


def test_ept_smoke_against_pagemap_eptp_and_violation_log(tmp_path: Path) -> None:
    scenario = LINUX / "kvm-ept-smoke.yaml"
    res = slatcheck("run", str(scenario), "--artifacts", str(tmp_path))
    assert res.returncode == 0, res.stdout + res.stderr
    run = tmp_path / "kvm-ept-smoke"
    slat = json.loads((run / "slat.json").read_text())
    assert json.loads((run / "findings.json").read_text()) == []
    (vm,) = slat["vms"]
    assert vm["format"] == "ept"
    oracle = pagemap_oracle(run / "workload-w1.out")
    touched, slots = scenario_touches(scenario)
    leaves = {int(m["gpa"], 16): m for m in vm["mappings"]}          # slat.json: hex
    assert touched and all(p in oracle for p in touched)
    for gpa in touched:                                  # every touched page, exactly
        assert int(leaves[gpa]["hpa"], 16) == oracle[gpa], hex(gpa)
        assert int(leaves[gpa]["size"], 16) == 4096 and leaves[gpa]["r"] and leaves[gpa]["x"]
    for m in vm["mappings"]:                             # and nothing maps elsewhere
        assert oracle.get(int(m["gpa"], 16)) == int(m["hpa"], 16), m
        raw = int(m["raw"], 16)
        assert raw & SPTE_MMU_PRESENT and (raw >> 3) & 7 == 6, hex(raw)   # KVM-present, WB
    # the root the walk started from is the one Bochs's debugger has in the current VMCS
    disc = vm["discovery"]
    (cur,) = [c for c in disc["current_vmcs"] if c["vmcsptr"] != hex((1 << 64) - 1)]
    assert int(cur["eptp"], 16) & ~0xFFF == int(vm["root"], 16)
    assert int(cur["vmcsptr"], 16) in {int(v["vmcs_pa"], 16) for v in disc["vcpus"]}
    assert all(disc["checks"].values()), disc["checks"]
    # Bochs logged an EPT violation for every touched page, and every violation in a
    # slot is mapped now
    faults = {int(g, 16) & ~0xFFF for g in re.findall(
        r"EPT violation for guest paddr (0x[0-9a-f]+)", (run / "bochs.log").read_text())}
    assert {g & ~0xFFF for g in touched} <= faults
    for g in faults:
        if any(lo <= g < hi for lo, hi in slots):
            assert g in leaves, hex(g)
    # after teardown, no live VM is reported
    assert slat["checks"][-1]["vms"] == []
    result = json.loads((run / "result.json").read_text())
    assert result["verdict"] == "pass"
