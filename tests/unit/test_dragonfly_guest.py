"""The DragonFly guest and the vkernel offline: ddb collection and the panic without ddb
from composed transcripts, the getty login then sh, the MAP_VPAGETABLE probe's
decision, symbols and DWARF types as the image keeps them, scenario validation, and
whole runs through the runner against a scripted DragonFly guest over the constructed
world of test_discovery_dragonfly: a pass, a stale host PTE caught (the negative
scenario), and the skip on a stock kernel, as JUnit and the summary show it."""

from __future__ import annotations

import json
import re
import shutil
import socket
import struct
import threading
import xml.etree.ElementTree as ET
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from bsd_fakes import ScriptedMachine
from test_discovery_dragonfly import (
    PID,
    REGION,
    Built,
    kernel_elf,
    world,
)

from harness.console import Console, GuestPanic
from harness.context import Services, default_services
from harness.dwarf import types_from_json
from harness.errors import InfraError, ScenarioError, ScenarioErrors
from harness.guests import GUEST_OSES
from harness.guests.dragonfly import dragonfly_symbols, dragonfly_types
from harness.images import Image
from harness.images.dragonfly_builder import kernel_types
from harness.junit import write_junit
from harness.machines.base import MachineConfig
from harness.machines.fake import FakeGuest, Rule
from harness.observe.dragonfly_vkernel import probe_result
from harness.registry import Registry
from harness.reporters import summary, summary_table
from harness.runner import run_scenario
from harness.scenario import load_scenario
from harness.target import FakeTarget

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data" / "console"
SCENARIOS = ROOT / "scenarios" / "dragonfly"
BANNER = "\r\nDragonFly/x86_64 (Amnesiac) (ttyd0)\r\n\r\nlogin: "
pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")


def transcript(name: str) -> str:
    return (DATA / name).read_text()


# -- the console: ddb, or the panic as printed -------------------------------------------

ANSWERS = {"trace": "Debugger() at Debugger+0x7c\npanic() at panic+0x236\n"
                    "vm_fault_vpagetable() at vm_fault_vpagetable+0x2b1\n",
           "ps": "  pid  ppid  pgrp   uid  state   wmesg   wchan   cmd\n 1021   900  1021     0"
                 "  R  CPU 0          slat-workload\n",
           "show registers": "rax  0x0\nrip  0xffffffff805f7e8c  Debugger+0x7c\n"}


def fake_ddb(peer: socket.socket, typed: list[str], text: str) -> None:
    peer.sendall(text.replace("\n", "\r\n").encode())
    buf = b""
    while True:
        chunk = peer.recv(4096)
        if not chunk:
            return
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            cmd = line.decode().strip()
            typed.append(cmd)
            peer.sendall(f"{cmd}\n{ANSWERS.get(cmd, '')}db> ".replace("\n", "\r\n").encode())


def console_pair(tmp_path: Path) -> tuple[Console, socket.socket]:
    a, b = socket.socketpair()
    return Console(a.detach(), log_path=tmp_path / "console.log", timeout=5.0,
                   profile=GUEST_OSES["dragonfly"].console), b


def test_a_panic_with_ddb_collects_trace_ps_registers(tmp_path: Path) -> None:
    con, peer = console_pair(tmp_path)
    typed: list[str] = []
    threading.Thread(target=fake_ddb, args=(peer, typed, transcript("dragonfly-panic-ddb.log")),
                     daemon=True).start()
    with pytest.raises(GuestPanic) as panic:
        con.expect("never-printed", timeout=5)
    con.close()
    peer.close()
    assert typed == ["trace", "ps", "show registers"]
    saved = (tmp_path / "debugger.txt").read_text()
    for cmd, out in ANSWERS.items():
        assert f"db> {cmd}\n{out}" in saved
    assert panic.value.verdict == "panic" and "vm_fault_vpagetable: bad vpte" in \
        panic.value.excerpt


def test_a_panic_without_ddb_keeps_the_kernel_report(tmp_path: Path) -> None:
    con, peer = console_pair(tmp_path)
    peer.sendall(transcript("dragonfly-panic-nodb.log").replace("\n", "\r\n").encode())
    with pytest.raises(GuestPanic):
        con.expect("never-printed", timeout=5)
    con.close()
    peer.close()
    saved = (tmp_path / "debugger.txt").read_text()
    assert saved.startswith("[no debugger prompt")
    assert "vm_fault_object() at vm_fault_object+0x1e9" in saved
    assert "Automatic reboot in 15 seconds" in saved


def test_near_misses_are_not_panics() -> None:
    patterns = [re.compile(p, re.M) for p in GUEST_OSES["dragonfly"].console.panic]
    for text in ("# grep 'panic: ' /var/log/messages\n", "debug.debugger_on_panic: 1\n",
                 "# echo db>\n"):
        assert not any(p.search(text) for p in patterns), text


def test_the_getty_banner_is_a_login_prompt() -> None:
    from harness.guests.dragonfly import LOGIN
    assert LOGIN.search(transcript("dragonfly-boot-login.log"))
    assert LOGIN.search("Amnesiac login: ") and not LOGIN.search("Last login: Tue")


# -- the MAP_VPAGETABLE probe ------------------------------------------------------------

def test_the_probe_decides_from_the_workload_report() -> None:
    assert probe_result('@@SLAT {"event":"probe","ok":1}\n') == (True, "probe ok")
    ok, said = probe_result(transcript("dragonfly-probe-stock.log"))
    assert not ok and "Invalid argument" in said
    ok, said = probe_result(transcript("dragonfly-probe-disabled.log"))
    assert not ok and "Operation not supported" in said
    assert probe_result("sh: /usr/local/bin/slat-workload: not found\n") == (
        False, "sh: /usr/local/bin/slat-workload: not found")
    assert probe_result("") == (False, "no output")


# -- symbols and types as the image keeps them -------------------------------------------

def image_of(tmp: Path, kernel: bytes, types_json: str | None = None,
             kernel_sha: str = "") -> Image:
    (tmp / "kernel").write_bytes(kernel)
    if types_json is not None:
        (tmp / "types.json").write_text(types_json)
    return Image(name="dragonfly-amd64-vkernel", arch="x86_64", dir=tmp, kernel=tmp / "kernel",
                 initrd=tmp / "i", modules=tmp, os="dragonfly", ready="",
                 manifest={"files": {"kernel": kernel_sha},
                           "login": {"user": "root", "password": ""}},
                 disk=tmp / "disk.qcow2", kernel_release="6.4-RELEASE")


class Answers:
    """A console stand-in for the symbol source: one canned output per command."""

    def __init__(self, output: str) -> None:
        self.output = output
        self.typed: list[str] = []

    def run(self, cmd: str, timeout: float = 0, check: bool = True) -> Any:
        self.typed.append(cmd)
        return type("R", (), {"output": self.output, "status": 0})()


def test_symbols_take_either_process_table_and_check_the_booted_kernel(tmp_path: Path) -> None:
    new, old = kernel_elf(tmp_path), kernel_elf(tmp_path, old=True)
    image = image_of(tmp_path, new)
    syms = dragonfly_symbols(Answers("\n"), image, ("allprocs", "procglob"),  # type: ignore[arg-type]
                             tmp_path)
    assert set(syms) == {"allprocs"} and "allprocs" in (tmp_path / "symbols.txt").read_text()
    image = image_of(tmp_path, old)
    assert set(dragonfly_symbols(Answers(""), image, ("allprocs", "procglob"),  # type: ignore[arg-type]
                                 tmp_path)) == {"procglob"}
    image = image_of(tmp_path, new, kernel_sha="ab" * 32)
    with pytest.raises(InfraError, match="is not the image's kernel"):
        dragonfly_symbols(Answers("cd" * 32 + "\n"), image, ("allprocs",),  # type: ignore[arg-type]
                          tmp_path)
    (tmp_path / "k.c").write_text("int unrelated;\nint main(void) { return 0; }\n")
    import subprocess
    subprocess.run(["gcc", "-o", str(tmp_path / "k"), str(tmp_path / "k.c")], check=True)
    image = image_of(tmp_path, (tmp_path / "k").read_bytes())
    with pytest.raises(InfraError, match="none of allprocs, procglob"):
        dragonfly_symbols(Answers(""), image, ("allprocs", "procglob"),  # type: ignore[arg-type]
                          tmp_path)


def test_types_come_from_the_kept_subset_or_the_kernel_dwarf(tmp_path: Path) -> None:
    elf = kernel_elf(tmp_path)
    kept = dragonfly_types(image_of(tmp_path, elf, kernel_types(elf)), ())
    assert kept.offsetof("struct vm_map_entry", "aux.master_pde") == 32
    assert "DWARF" in str(getattr(kept.container, "source", "DWARF"))
    (tmp_path / "types.json").unlink()
    whole = dragonfly_types(image_of(tmp_path, elf), ())
    assert whole.offsetof("struct proc", "p_vkernel") == kept.offsetof("struct proc",
                                                                       "p_vkernel")
    with pytest.raises(InfraError, match="from the kernel's DWARF alone"):
        dragonfly_types(image_of(tmp_path, elf), ("vmm",))
    with pytest.raises(InfraError, match="no usable kernel types"):
        dragonfly_types(image_of(tmp_path, b"not an elf"), ())
    with pytest.raises(InfraError, match="lacks what vkernel discovery reads"):
        (tmp_path / "k.c").write_text("struct proc { int p_pid; } p;\nint main(void) "
                                      "{ return p.p_pid; }\n")
        import subprocess
        subprocess.run(["gcc", "-g", "-o", str(tmp_path / "k"), str(tmp_path / "k.c")],
                       check=True)
        kernel_types((tmp_path / "k").read_bytes())


# -- scenario validation -----------------------------------------------------------------

def test_the_dragonfly_scenarios_validate() -> None:
    names = sorted(p.name for p in SCENARIOS.glob("*.yaml"))
    assert names == ["vkernel-inval.yaml", "vkernel-smoke.yaml", "vkernel-stale.yaml",
                     "vkernel-stock.yaml"]
    for p in SCENARIOS.glob("*.yaml"):
        sc = load_scenario(p)
        assert (sc.guest.os, sc.hypervisor) == ("dragonfly", "dragonfly-vkernel")
    stale = load_scenario(SCENARIOS / "vkernel-stale.yaml")
    assert stale.expect.verdict == "fail" and stale.expect.findings[0].kind == "stale"


@pytest.mark.parametrize("workload, message", [
    ("slots: [{gpa: 0x100000001000, size: 2M}]", "multiples of 2M"),
    ("slots: [{gpa: 0x100000000000, size: 3M}]", "multiples of 2M"),
    ("slots: [{gpa: 0x100000000000, size: 2G}]", "at most 1G"),
    ("slots: [{gpa: 0x0, size: 2M}, {gpa: 0x400000, size: 2M}]", "one slot"),
    ("slots: [{gpa: 0x100000000000, size: 2M, flags: [ro]}]", "no flags"),
    ("vms: 3\n      slots: [{gpa: 0x100000000000, size: 2M}]", "optionally a vmspace"),
    ("cycles: 2\n      slots: [{gpa: 0x100000000000, size: 2M}]", "once (cycles: 1)"),
    ("vms: 2\n      slots: [{gpa: 0x7fffc0000000, size: 2M}]", "below 2^47"),
    ("slots: [{gpa: 0x100000000000, size: 2M}]\n      touch: [{gpa: 0x100000000000, "
     "access: x}]", "not executable"),
])
def test_vkernel_workloads_outside_what_the_program_does_are_refused(
        tmp_path: Path, workload: str, message: str) -> None:
    (tmp_path / "s.yaml").write_text(f"""name: bad
guest: {{os: dragonfly, image: dragonfly-amd64-vkernel}}
hypervisor: dragonfly-vkernel
steps:
  - boot: {{}}
  - workload:
      {workload}
""")
    with pytest.raises((ScenarioError, ScenarioErrors), match=re.escape(message)):
        load_scenario(tmp_path / "s.yaml")


# -- whole runs through the runner --------------------------------------------------------

def report(released: bool, vpte: str = "") -> str:
    """The workload's report for vms: 2 (the region, and the vmspace at VA + 1 GiB)."""
    lines: list[dict[str, Any]] = []
    for vm, va in ((0, REGION), (1, REGION + (1 << 30))):
        lines += [{"event": "vm", "vm": vm, "pid": PID, "cycle": 0},
                  {"event": "slot", "vm": vm, "slot": 0, "gpa": va, "size": 4 << 20,
                   "hva": va, "flags": ""},
                  {"event": "vpagetable", "vm": vm, "image": "/tmp/slat-vkernel-4242.img",
                   "image_size": 0, "master_pde": 7, "paddr": 0, "vmspace": vm},
                  {"event": "exit", "vm": vm, "reason": "hlt"}]
    lines.append({"event": "hold"})
    if vpte:
        lines.append({"event": "vpte", "op": vpte, "va": REGION + 0x2000})
    if released:
        lines += [{"event": "destroyed", "vm": 0}, {"event": "destroyed", "vm": 1},
                  {"event": "done", "status": 0}, {"event": "exit_status", "status": 0}]
    return "".join("@@SLAT " + json.dumps(x, separators=(",", ":")) + "\n" for x in lines)


class DragonFlyWorld:
    """A scripted DragonFly L1 over the constructed vkernel world; *probe* is what the
    workload's probe prints (a kernel with or without MAP_VPAGETABLE)."""

    def __init__(self, tmp: Path, probe: str) -> None:
        elf = kernel_elf(tmp)
        self.types_json = kernel_types(elf)
        self.B: Built = world(types_from_json(self.types_json), tmp)
        self.elf = elf
        self.released = False
        self.vpte = ""
        self.guest = FakeGuest([
            Rule(r"^export PATH="), Rule(r"^uname -r$", "6.4-RELEASE\n"),
            Rule(r"^sysctl vm.vkernel_enable=1$", "vm.vkernel_enable: 0 -> 1\n"),
            Rule(r"^/usr/local/bin/slat-workload --probe$", probe),
            Rule(r"^rm -f .*mkfifo"), Rule(r"^\( slat-workload "), Rule(r"^echo \$!$", f"{PID}\n"),
            Rule(r"^i=0; while"), Rule(r"^unset exit_ i$"),
            Rule(r"^cat /tmp/slat-w1\.out$",
                 answer=lambda m: (report(self.released, self.vpte), 0)),
            Rule(r"^echo '(stale|inval) (0x[0-9a-f]+)' 1<>/tmp/slat-w1\.fifo;",
                 answer=self.vpte_command),
            Rule(r"^echo go 1<>", answer=self.release)])

    def vpte_command(self, m: re.Match[str]) -> tuple[str, int]:
        """The held workload clears the leaf VPTE (and, for inval, the host PTE goes)."""
        op, va = m.group(1), int(m.group(2), 16)
        W, lay = self.B.W, self.B.lay
        page = (va - REGION) // 0x1000
        from test_discovery_dragonfly import ROOT1, image_page
        W.phys.write_u64(image_page(lay, 3 + page // 512) + 8 * (page % 512), 0)
        if op == "inval":                       # MADV_INVAL: the host drops its PTE
            self._clear_host_pte(ROOT1, va)
        self.vpte = op
        return f'@@SLAT {{"event":"vpte","op":"{op}","va":{va}}}\n', 0

    def _clear_host_pte(self, root: int, va: int) -> None:
        table = root
        for level in (3, 2, 1):
            entry = struct.unpack("<Q", self.B.W.phys.read(table + 8 * (va >> (12 + 9 * level)
                                                                         & 511), 8))[0]
            table = entry & 0x000FFFFFFFFFF000
        self.B.W.phys.write_u64(table + 8 * (va >> 12 & 511), 0)

    def release(self, m: Any) -> tuple[str, int]:
        from harness.discovery.dragonfly_vkernel import proc_heads
        from harness.discovery.linux_kvm_common import KernelReader
        from harness.mem import DictMem
        self.released = True                 # the process exits: off its process list
        W = self.B.W
        head = proc_heads(KernelReader(DictMem(), W.T), W.syms)[PID % 256]
        W.put(head, "struct proclist", "lh_first", 0)
        return "", 0

    def services(self, tmp: Path) -> Services:
        base = default_services()
        (tmp / "types.json").write_text(self.types_json)
        (tmp / "kernel").write_bytes(self.elf)
        image = Image(name="dragonfly-amd64-vkernel", arch="x86_64", dir=tmp,
                      kernel=tmp / "kernel", initrd=tmp / "i", modules=tmp, os="dragonfly",
                      ready="", manifest={"files": {}, "login": {"user": "root",
                                                                  "password": ""}},
                      disk=tmp / "disk.qcow2", kernel_release="6.4-RELEASE")
        guest = replace(GUEST_OSES["dragonfly"], symbols=lambda *a: dict(self.B.W.syms))
        machines: Registry[Any] = Registry("machine backend")
        machines.add("qemu", self.machine)
        return Services(_one(base.guests, guest), base.hypervisors, base.models, machines,
                        lambda name, progress: image)

    def machine(self, config: MachineConfig) -> ScriptedMachine:
        target = FakeTarget(self.B.W.phys, registers={"cs": 0x8}, virt=self.B.W.virt)
        return ScriptedMachine(config, self.guest, target, BANNER, prompt="# ")


def _one(base: Registry[Any], record: Any) -> Registry[Any]:
    out: Registry[Any] = Registry(base.what)
    for name, rec in base.items():
        out.add(name, record if name == record.name else rec)
    return out


SCENARIO = """name: {name}
guest: {{os: dragonfly, image: dragonfly-amd64-vkernel}}
machine: {{cpu: "max,-la57", memory: 64M}}
hypervisor: dragonfly-vkernel
{expect}steps:
  - boot: {{}}
  - workload:
      id: w1
      vms: 2
      slots: [{{gpa: 0x100000000000, size: 4M}}]
      touch: [{{gpa: 0x100000002000, access: w}}, {{gpa: 0x100000003000, access: r}},
              {{gpa: 0x100000201000, access: w}}, {{gpa: 0x1000003ff000, access: r}}]
{middle}  - check: {{vms: 2}}
  - release: {{workload: w1}}
  - check: {{vms: 0}}
"""
SHELL = """  - shell:
      cmd: "echo '{op} 0x100000002000' 1<>/tmp/slat-w1.fifo; i=0; while true; do break; done"
      expect: '"op":"{op}"'
"""
NEGATIVE = "expect:\n  verdict: fail\n  findings:\n    - {kind: stale, gpa: 0x100000002000}\n"
PROBE_OK = '@@SLAT {"event":"probe","ok":1}\n'


def run(tmp_path: Path, name: str, probe: str = PROBE_OK, expect: str = "",
        middle: str = "") -> tuple[Any, DragonFlyWorld]:
    (tmp_path / f"{name}.yaml").write_text(SCENARIO.format(name=name, expect=expect,
                                                           middle=middle))
    fw = DragonFlyWorld(tmp_path, probe)
    res = run_scenario(load_scenario(tmp_path / f"{name}.yaml"), tmp_path / "art",
                       services=fw.services(tmp_path))
    return res, fw


def test_a_vkernel_region_whose_host_ptes_follow_its_vptes_passes(tmp_path: Path) -> None:
    res, fw = run(tmp_path, "vk-fake")
    assert (res.verdict, res.status) == ("pass", 0), res.message
    assert res.properties["hypervisor.vkernel.probe"] == "probe ok"
    slat = json.loads((res.artifacts / "slat.json").read_text())
    first = slat["checks"][0]["vms"]
    assert len(first) == 2 and first[0]["discovery"]["master_pde"] == "0x7"
    assert len(first[0]["mappings"]) == 4 and first[1]["mappings"] == []
    assert first[1]["discovery"]["space"] == "vmspace 0x5a17"
    assert slat["checks"][1]["vms"] == []
    typed = fw.guest.typed
    assert typed[:4] == ["export PATH=/sbin:/bin:/usr/sbin:/usr/bin:/usr/local/sbin:"
                         "/usr/local/bin", "uname -r", "sysctl vm.vkernel_enable=1",
                         "/usr/local/bin/slat-workload --probe"]
    log = (res.artifacts / "console.log").read_text()
    assert "login: root" in log and "exec /bin/sh" in log


def test_a_vpte_cleared_without_madv_inval_is_a_stale_finding(tmp_path: Path) -> None:
    res, _fw = run(tmp_path, "vk-fake-stale", expect=NEGATIVE,
                   middle=SHELL.format(op="stale"))
    assert (res.verdict, res.outcome, res.status) == ("fail", "xfailed", 0), res.message
    assert [(f.kind, f.gpa) for f in res.findings] == [("stale", REGION + 0x2000)]


def test_with_madv_inval_the_same_change_passes(tmp_path: Path) -> None:
    res, _fw = run(tmp_path, "vk-fake-inval", middle=SHELL.format(op="inval"))
    assert (res.verdict, res.status) == ("pass", 0), res.message


def test_a_stock_kernel_is_a_skip_in_junit_and_the_summary(tmp_path: Path) -> None:
    res, fw = run(tmp_path, "vk-fake-stock", probe=transcript("dragonfly-probe-stock.log"))
    assert (res.verdict, res.outcome, res.status) == ("skip", "skipped", 0)
    assert "does not translate MAP_VPAGETABLE" in res.message
    assert "Invalid argument" in res.message
    assert not any(c.startswith("( slat-workload") for c in fw.guest.typed)
    write_junit([res], tmp_path / "j.xml")
    case = ET.parse(tmp_path / "j.xml").getroot().find(".//testcase")
    assert case is not None
    skipped = case.find("skipped")
    assert skipped is not None and "MAP_VPAGETABLE" in (skipped.get("message") or "")
    assert summary([res])["outcomes"] == {"skipped": 1}
    assert "1 skipped" in summary_table([res])
