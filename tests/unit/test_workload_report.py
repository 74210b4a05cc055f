"""harness.workload: the workload's command line and the parser of its report.

The transcript under tests/data/workload/ was recorded on a real linux-amd64 L1
(QEMU TCG, nested SVM): a foreground run, then a background run whose
/proc/PID/maps was read while it held.  The checks compare the parsed report with
facts taken from the transcript independently of the parser (the command line
typed, the raw numbers, the kernel's maps).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from harness.errors import InfraError
from harness.scenario.spec import SlotSpec, TouchSpec, WorkloadStep
from harness.workload import parse_events, parse_report, workload_argv

DATA = Path(__file__).resolve().parents[1] / "data" / "workload"
TRANSCRIPT = (DATA / "linux-amd64-console.log").read_text()
PROMPT = "slat# "
GUEST_RAM = 1 << 30          # the transcript's guest ran with -m 1G
WORKLOAD_SRC = Path(__file__).resolve().parents[2] / "images" / "workload"


def _outputs() -> list[tuple[str, str]]:
    """(command, output) for every command typed at the prompt."""
    chunks = TRANSCRIPT.split(PROMPT)[1:]
    out = []
    for chunk in chunks:
        text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", chunk).replace("\r", "")
        cmd, _, rest = text.partition("\n")
        out.append((cmd.strip(), rest))
    return out


def _run(marker: str) -> tuple[str, str]:
    """The first command containing *marker* and its output."""
    return next((c, o) for c, o in _outputs() if marker in c)


def _touches(cmd: str) -> list[tuple[int, str]]:
    """The --touch arguments of a typed command line."""
    return [(int(g, 16), a) for g, a in re.findall(r"--touch (0x[0-9a-f]+):([rwx])", cmd)]


def _slots(cmd: str) -> list[tuple[int, int, str]]:
    """The --slot arguments of a typed command line."""
    return [(int(g, 16), int(s, 16), f)
            for g, s, f in re.findall(r"--slot (0x[0-9a-f]+):(0x[0-9a-f]+):?(\S*)", cmd)]


# ---- the recorded transcript -------------------------------------------------

def test_foreground_run_reports_every_vm_slot_and_page() -> None:
    cmd, out = _run("slat-workload --vms 2 --slot")
    report = parse_report(out.splitlines())
    slots = _slots(cmd)
    assert [vm.index for vm in report.vms] == [0, 1]
    assert report.holds == 1 and report.done == 0 and not report.errors
    for vm in report.vms:
        assert [(s.gpa, s.size, "+".join(s.flags)) for s in vm.slots] == slots
        pages = {g for g, sz, _ in slots for g in range(g, g + sz, 4096)}
        assert set(vm.pagemap) == pages and not vm.absent
        assert all(0 < pa < GUEST_RAM and pa % 4096 == 0 for pa in vm.pagemap.values())
        assert vm.destroyed
    first, second = (set(vm.pagemap.values()) for vm in report.vms)
    assert not first & second, "two VMs share an L1 page"


def test_raw_numbers_match_the_parsed_ones() -> None:
    _, out = _run("slat-workload --vms 2 --slot")
    report = parse_report(out.splitlines())
    raw_hvas = [int(h) for h in re.findall(r'"hva":(\d+)', out)]
    assert [s.hva for vm in report.vms for s in vm.slots] == raw_hvas
    raw_runs = [json.loads(m) for m in re.findall(r'"runs":(\[.*\])\}', out)]
    assert sum(n for runs in raw_runs for _, _, n in runs) == \
        sum(len(vm.pagemap) for vm in report.vms)


def test_exits_follow_from_the_touches() -> None:
    cmd, out = _run("slat-workload --vms 2 --slot")
    report = parse_report(out.splitlines())
    slots = _slots(cmd)

    def slot_of(gpa: int) -> tuple[int, int, str] | None:
        return next((s for s in slots if s[0] <= gpa < s[0] + s[1]), None)

    want = []   # an MMIO exit for writes to read-only slots and any access outside slots
    for gpa, access in _touches(cmd):
        slot = slot_of(gpa)
        if slot is None or (access == "w" and "ro" in slot[2]):
            want.append((gpa, access == "w"))
    for vm in report.vms:
        mmio = [(e.addr, e.write) for e in vm.exits if e.reason == "mmio"]
        assert mmio == want
        assert vm.exits[-1].reason == "hlt"
        assert vm.code_pages and all(slot_of(g) for g in vm.code_pages)
        touched = {g & ~0xFFF for g, _ in _touches(cmd)}
        assert not touched & set(vm.code_pages)


def test_held_run_slots_are_the_kernels_mappings() -> None:
    """While it held, /proc/PID/maps showed one mapping per slot at the reported HVA."""
    _, out = _run("cat /proc/$!/maps")
    maps = {(int(a, 16), int(b, 16))
            for a, b in re.findall(r"^([0-9a-f]+)-([0-9a-f]+) rw-p", out, re.M)}
    report = parse_report(out.splitlines())
    assert report.holds == 1 and report.done is None
    assert len(report.vms) == 2
    for vm in report.vms:
        for slot in vm.slots:
            assert (slot.hva, slot.hva + slot.size) in maps
        assert not vm.destroyed


def test_whole_console_parses_with_prompts_echo_and_escapes() -> None:
    events = parse_events(TRANSCRIPT.splitlines(keepends=True))
    assert len(events) == TRANSCRIPT.count("@@SLAT ")
    assert {e["event"] for e in events} >= {"vm", "slot", "code", "exit", "pagemap", "hold",
                                            "destroyed", "done"}


# ---- robustness --------------------------------------------------------------

def _first_pagemap_line() -> str:
    return next(line for line in TRANSCRIPT.splitlines() if '"event":"pagemap"' in line)


def test_kernel_message_cutting_a_report_line() -> None:
    line = _first_pagemap_line().rstrip("\r")
    mid = len(line) // 2
    cut = [line[:mid] + "[   12.345678] kvm: some message\r", line[mid:] + "\r"]
    assert parse_events(cut) == parse_events([line])


def test_kernel_message_before_and_after_a_line() -> None:
    line = _first_pagemap_line()
    noisy = ["[    5.000001] ccp: probe\r", line + "[    5.1] tail junk", "\x1b[6n"]
    assert parse_events(noisy) == parse_events([line])


def test_truncated_report_line_raises() -> None:
    line = _first_pagemap_line().rstrip("\r")
    with pytest.raises(InfraError, match="unreadable"):
        parse_events([line[: len(line) // 2]])


def test_event_for_unknown_vm_raises() -> None:
    with pytest.raises(InfraError, match="before its 'vm' event"):
        parse_report(['@@SLAT {"event":"code","vm":3,"gpa":0}'])


def test_absent_pages_and_errors() -> None:
    report = parse_report([
        '@@SLAT {"event":"vm","vm":0,"pid":1,"cycle":0}',
        '@@SLAT {"event":"pagemap","vm":0,"slot":0,"runs":[[0,-1,2],[8192,5,1]]}',
        '@@SLAT {"event":"error","msg":"KVM_RUN: bad"}'])
    vm = report.vms[0]
    assert vm.absent == (0, 4096) and vm.pagemap == {8192: 5 * 4096}
    with pytest.raises(InfraError, match="KVM_RUN: bad"):
        report.raise_on_error()


def test_cycles_are_kept_apart() -> None:
    lines = []
    for cycle, pfn in ((0, 10), (1, 20)):
        lines += [f'@@SLAT {{"event":"vm","vm":0,"pid":1,"cycle":{cycle}}}',
                  f'@@SLAT {{"event":"pagemap","vm":0,"slot":0,"runs":[[0,{pfn},1]]}}',
                  '@@SLAT {"event":"destroyed","vm":0}']
    report = parse_report(lines)
    assert [c[0].pagemap for c in report.cycles] == [{0: 10 * 4096}, {0: 20 * 4096}]
    assert report.vms[0].cycle == 1 and all(c[0].destroyed for c in report.cycles)


# ---- the command line --------------------------------------------------------

PARAMS = WorkloadStep(
    index=1, line=4, id="w1", vms=2, threads=True, cycles=3, hold="none",
    slots=(SlotSpec(0x0, 0x10000), SlotSpec(0x80000, 0x10000, ("ro", "log"))),
    touch=(TouchSpec(0x2000, "w"), TouchSpec(0x81000, "r")))


def test_argv_carries_every_parameter() -> None:
    argv = workload_argv(PARAMS)
    assert argv[0] == "slat-workload"
    text = " ".join(argv)
    for part in ("--vms 2", "--cycles 3", "--threads", "--no-hold",
                 "--slot 0x0:0x10000", "--slot 0x80000:0x10000:ro+log",
                 "--touch 0x2000:w", "--touch 0x81000:r"):
        assert part in text
    assert "--hold-last" in workload_argv(replace(PARAMS, hold="last"))
    each = workload_argv(replace(PARAMS, hold="each"))
    assert "--no-hold" not in each and "--hold-last" not in each


@pytest.fixture(scope="module")
def host_workload(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The workload compiled for this host (its argument parser runs before /dev/kvm)."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc not installed")
    out = tmp_path_factory.mktemp("wl") / "slat-workload"
    subprocess.run(["gcc", "-static", "-O2", "-pthread", "-o", str(out),
                    *recipe_sources("linux-amd64")], check=True, capture_output=True)
    return out


def recipe_sources(image: str) -> list[str]:
    """The workload sources an image's recipe compiles."""
    recipe = yaml.safe_load((WORKLOAD_SRC.parent / image / "recipe.yaml").read_text())
    return [str(WORKLOAD_SRC / s) for s in recipe["workload"]["sources"]]


def _run_host(binary: Path, argv: list[str]) -> tuple[int, list[str]]:
    proc = subprocess.run([str(binary), *argv[1:]], capture_output=True, text=True,
                          timeout=60, input="\n")
    return proc.returncode, proc.stdout.splitlines()


def test_the_c_parser_accepts_the_argv(host_workload: Path) -> None:
    """Either the run succeeds (a usable /dev/kvm) or it stops at /dev/kvm, not at parsing."""
    status, lines = _run_host(host_workload, workload_argv(PARAMS))
    report = parse_report(lines)
    if status == 0:
        assert report.done == 0 and len(report.cycles) == 3
    else:
        assert any("/dev/kvm" in e or "KVM_" in e for e in report.errors), report.errors


@pytest.mark.parametrize("argv, message", [
    (["w", "--bogus"], "unknown argument"),
    (["w", "--slot", "0x0:0x1000:rw"], "unknown slot flag"),
    (["w", "--slot", "0x0:0x1000", "--touch", "0x0:w"], "free page"),
    (["w", "--slot", "0x0:0x2000", "--slot", "0x1000:0x1000"], "overlap"),
    (["w", "--slot", "0x0:0x2000", "--touch", "0x1000:x", "--touch", "0x1000:w"], "stub"),
    (["w", "--slot", "0x100000000:0x2000", "--touch", "0x100000000:r"], "cannot reach"),
])
def test_the_c_parser_rejects_with_an_error_event(host_workload: Path, argv: list[str],
                                                  message: str) -> None:
    status, lines = _run_host(host_workload, argv)
    report = parse_report(lines)
    assert status != 0
    assert any(message in e for e in report.errors), report.errors


@pytest.mark.parametrize("cc, image", [("gcc", "linux-amd64"),
                                       ("aarch64-linux-gnu-gcc", "linux-arm64")])
def test_workload_compiles_without_warnings(tmp_path: Path, cc: str, image: str) -> None:
    if shutil.which(cc) is None:
        pytest.skip(f"{cc} not installed")
    proc = subprocess.run([cc, "-static", "-O2", "-Wall", "-Wextra", "-Werror", "-pthread",
                           "-o", str(tmp_path / "w"), *recipe_sources(image)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
