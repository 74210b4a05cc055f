"""The spine, end to end through the CLI, checked against oracles the harness does not own.

Oracles: the workload's own report of ``/proc/self/pagemap`` (parsed here with
json, not with harness.workload), QEMU's own ``vmrun!`` log lines, and the
process table (for cleanup).  The scenarios are the shipped ones.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.boot

ROOT = Path(__file__).resolve().parents[2]
LINUX = ROOT / "scenarios" / "linux"
INJECT = {"frame": "wrong_frame", "permission": "permission", "clear": "missing",
          "reserved-bit": "reserved_bits"}


def slatcheck(*args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "harness", *args], cwd=ROOT, text=True,
                          capture_output=True, timeout=timeout)


def pagemap_oracle(out: Path) -> dict[int, int]:
    """GPA page -> L1 physical page, straight from the workload's @@SLAT pagemap lines."""
    pages: dict[int, int] = {}
    for line in out.read_text().splitlines():
        if not line.startswith("@@SLAT "):
            continue
        ev = json.loads(line[len("@@SLAT "):])
        if ev.get("event") == "pagemap" and ev["vm"] == 0:
            for gpa, pfn, count in ev["runs"]:
                for i in range(count):
                    if pfn >= 0:
                        pages[gpa + i * 4096] = (pfn + i) * 4096
    return pages


def touched(scenario: Path) -> list[int]:
    doc = yaml.safe_load(scenario.read_text())
    return [t["gpa"] for st in doc["steps"] if "workload" in st
            for t in st["workload"].get("touch", [])]


def test_smoke_mappings_agree_with_guest_pagemap(tmp_path: Path) -> None:
    scenario = LINUX / "kvm-npt-smoke.yaml"
    res = slatcheck("run", str(scenario), "--artifacts", str(tmp_path),
                    "--junit", str(tmp_path / "junit.xml"))
    assert res.returncode == 0, res.stdout + res.stderr
    run = tmp_path / "kvm-npt-smoke"
    slat = json.loads((run / "slat.json").read_text())
    assert json.loads((run / "findings.json").read_text()) == []
    (vm,) = slat["vms"]
    assert vm["format"] == "npt"
    leaves = {m["gpa"]: m for m in vm["mappings"]}
    oracle = pagemap_oracle(run / "workload-w1.out")
    pages = touched(scenario)
    assert pages and all(p in oracle for p in pages)
    for gpa in pages:                                  # every touched page, exactly
        assert leaves[gpa]["hpa"] == oracle[gpa], hex(gpa)
        assert leaves[gpa]["size"] == 4096 and leaves[gpa]["r"]
    for m in vm["mappings"]:                           # and nothing maps elsewhere
        assert oracle.get(m["gpa"]) == m["hpa"], m
    # QEMU's own log saw VMRUN with the VMCB whose nCR3 the harness walked
    vmruns = {int(a, 16) for a in re.findall(r"vmrun! ([0-9a-fx]+)",
                                             (run / "qemu.log").read_text())}
    assert {int(v["vmcb_pa"], 16) for v in vm["discovery"]["vcpus"]} <= vmruns
    # after teardown, no live VM is reported although its VMCB page lingers
    assert slat["checks"][-1]["vms"] == []
    props = {p.get("name"): p.get("value")
             for p in ET.parse(tmp_path / "junit.xml").iter("property")}
    assert props["kvm-npt-smoke.guest.uname"].startswith("6.1.")
    assert any(k.startswith("kvm-npt-smoke.image.sha256.") for k in props)
    assert any(k.startswith("kvm-npt-smoke.package.linux-image-") for k in props)


def test_each_injection_fails_with_its_finding(tmp_path: Path) -> None:
    files = [LINUX / f"kvm-npt-inject-{k}.yaml" for k in INJECT]
    res = slatcheck("run", *map(str, files), "--artifacts", str(tmp_path))
    assert res.returncode == 0, res.stdout + res.stderr      # each failed as it expects
    assert f"{len(INJECT)} xfailed" in res.stdout
    for kind, finding in INJECT.items():
        run = tmp_path / f"kvm-npt-inject-{kind}"
        found = json.loads((run / "findings.json").read_text())
        hits = [f for f in found if f["kind"] == finding and int(f["gpa"], 16) == 0x81000]
        assert hits, (kind, found)
        log = (run / "injections.log").read_text()
        assert f"{kind.replace('-', '_')} gpa=0x81000" in log
        result = json.loads((run / "result.json").read_text())
        assert (result["verdict"], result["outcome"]) == ("fail", "xfailed")


def _pids_mentioning(text: str) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and int(d.name) != os.getpid():
            try:
                if text in (d / "cmdline").read_bytes().replace(b"\0", b" ").decode():
                    out.append(int(d.name))
            except OSError:
                continue
    return out


def test_sigint_during_boot_leaves_nothing(tmp_path: Path) -> None:
    art = tmp_path / "art"
    proc = subprocess.Popen([sys.executable, "-m", "harness", "run",
                             str(LINUX / "kvm-npt-smoke.yaml"), "--artifacts", str(art),
                             "--junit", str(tmp_path / "junit.xml")],
                            cwd=ROOT, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    cmdline = art / "kvm-npt-smoke" / "qemu.cmdline"
    deadline = time.monotonic() + 300
    while not cmdline.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert cmdline.exists(), "QEMU never started"
    time.sleep(1.0)                                   # QEMU is booting the L1 now
    assert _pids_mentioning(str(art)), "no QEMU process while booting"
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 1, out
    deadline = time.monotonic() + 10
    while _pids_mentioning(str(art)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _pids_mentioning(str(art)) == []           # no QEMU, no GDB
    assert (art / "kvm-npt-smoke" / "console.log").exists()
    result = json.loads((art / "kvm-npt-smoke" / "result.json").read_text())
    assert result["verdict"] == "interrupted"
    suite = ET.parse(tmp_path / "junit.xml").getroot()
    assert suite.find(".//testcase/failure") is not None
