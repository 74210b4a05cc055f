"""The FreeBSD guest and bhyve offline: the support decision from recorded identcpu and
vmm.ko transcripts, ddb collection (and the panic without ddb), the observer and the
process-table backing over constructed L1 memory, and whole runs through the runner
against a scripted FreeBSD guest: a pass on a CPU with NRIP save, an injected corruption
caught, and the skip on TCG's CPU, as JUnit and the summary show it."""

from __future__ import annotations

import json
import re
import socket
import threading
import xml.etree.ElementTree as ET
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from bsd_fakes import FREEBSD_BANNER, ScriptedMachine
from encoders import NptEncoder, Spec, build
from test_discovery_freebsd import CDEVP_LIST, VmSpec, World, dmap
from test_discovery_freebsd import build as build_bhyve

from harness import bhyve_support as bs
from harness.arch import ARCHES
from harness.console import Console, GuestPanic
from harness.context import Services, default_services
from harness.errors import InfraError, SkipScenario
from harness.guests import GUEST_OSES
from harness.guests.freebsd import freebsd_backing, panic_text
from harness.guests.record import BackingQuery
from harness.images import Image
from harness.junit import write_junit
from harness.machines.base import MachineConfig
from harness.machines.fake import FakeGuest, Rule
from harness.observe import KernelView
from harness.observe.freebsd_bhyve import observe
from harness.registry import Registry
from harness.reporters import summary, summary_table
from harness.runner import run_scenario
from harness.scenario import load_scenario
from harness.target import FakeTarget, l1_memories

DATA = Path(__file__).resolve().parents[1] / "data" / "console"
MEM = 64 << 20
PID = 4242
ALLPROC = 0xFFFF_FFFF_8123_5000        # &allproc in the kernel's data (a virtual read)
HVA = 0x8_0100_0000                     # where libvmmapi mapped the system segment
NAME = f"slat-{PID}-0-0"


def transcript(name: str) -> str:
    return (DATA / name).read_text()


# -- the support decision ------------------------------------------------------------

def test_tcg_lacks_nrip_save_and_the_run_is_skipped_naming_it() -> None:
    cpu = bs.parse_cpu(transcript("freebsd-identcpu-tcg.log"))
    assert (cpu.vendor, cpu.svm, sorted(cpu.svm_features)) == ("AMD", True, ["NAsids", "NP"])
    load = bs.parse_vmm_load(transcript("freebsd-vmm-load-tcg.log"))
    assert load.status == 1
    with pytest.raises(SkipScenario) as skip:
        bs.decide(cpu, load)
    msg = str(skip.value)
    assert "NRIP save (CPUID 8000_000A EDX bit 3)" in msg and "'NRIP' not available" in msg
    assert "TCG does not emulate NRIP save" in msg and "nested SVM" in msg
    assert skip.value.verdict == "skip" and skip.value.exit_status == 0


def test_kvm_hosts_run_bhyve() -> None:
    amd = bs.decide(bs.parse_cpu(transcript("freebsd-identcpu-kvm-amd.log")),
                    bs.parse_vmm_load(transcript("freebsd-vmm-load-kvm-amd.log")))
    assert amd.backend == "svm" and {"NP", "NRIP"} <= set(amd.features)
    intel = bs.decide(bs.parse_cpu(transcript("freebsd-identcpu-kvm-intel.log")),
                      bs.VmmLoad(0, "kldload-status 0\n"))
    assert intel.backend == "vmx" and {"EPT", "UG"} <= set(intel.features)


def test_vmx_without_unrestricted_guest_is_skipped_even_though_vmm_loads() -> None:
    text = transcript("freebsd-identcpu-kvm-intel.log").replace("EPT,UG,VPID", "EPT,VPID")
    with pytest.raises(SkipScenario, match="unrestricted guest"):
        bs.decide(bs.parse_cpu(text), bs.VmmLoad(0, ""))
    no_ept = text.replace("EPT,VPID", "VPID")
    with pytest.raises(SkipScenario, match="lacks EPT"):
        bs.decide(bs.parse_cpu(no_ept), bs.VmmLoad(1, "vmx_init: processor does not support "
                                                     "desired secondary processor-based "
                                                     "controls\n"))


def test_no_virtualization_at_all_is_a_skip() -> None:
    text = transcript("freebsd-identcpu-tcg.log").replace(",SVM,", ",").replace(
        "  SVM: NP,NAsids=16\n", "")
    with pytest.raises(SkipScenario, match="SVM or VMX"):
        bs.decide(bs.parse_cpu(text), bs.VmmLoad(1, "SVM: not available.\n"))


def test_sources_that_disagree_are_errors_not_skips() -> None:
    kvm = bs.parse_cpu(transcript("freebsd-identcpu-kvm-amd.log"))
    with pytest.raises(InfraError, match="reports NRIP missing, but the CPUID line shows it"):
        bs.decide(kvm, bs.parse_vmm_load(transcript("freebsd-vmm-load-tcg.log")))
    tcg = bs.parse_cpu(transcript("freebsd-identcpu-tcg.log"))
    with pytest.raises(InfraError, match="loaded although the CPUID lines lack"):
        bs.decide(tcg, bs.VmmLoad(0, ""))
    with pytest.raises(InfraError, match="without a reason from vmm.ko"):
        bs.decide(tcg, bs.VmmLoad(1, "kldload: can't load vmm: Exec format error\n"))
    with pytest.raises(InfraError, match="no kldload status"):
        bs.parse_vmm_load("kldload: can't load vmm\n")


# -- the console: ddb, or the panic as printed --------------------------------------

ANSWERS = {"show panic": "panic: vm_fault_lookup: fault on nofault entry\n",
           "bt": "Tracing pid 1021 tid 100135 td 0xfffff80012345000\nkdb_enter() at "
                 "kdb_enter+0x33/frame 0xfffffe00c5a1e6c0\nvpanic() at vpanic+0x161\n",
           "ps": "  pid  ppid  pgrp   uid  state   wmesg   wchan   cmd\n 1021   900  1021     0"
                 "  R       CPU 1           slat-workload\n"}


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


def test_a_panic_with_ddb_collects_show_panic_bt_ps(tmp_path: Path) -> None:
    a, b = socket.socketpair()
    typed: list[str] = []
    threading.Thread(target=fake_ddb, args=(b, typed, transcript("freebsd-panic-ddb.log")),
                     daemon=True).start()
    con = Console(a.detach(), log_path=tmp_path / "console.log", timeout=5.0,
                  profile=GUEST_OSES["freebsd"].console)
    with pytest.raises(GuestPanic) as panic:
        con.expect("never-printed", timeout=5)
    con.close()
    b.close()
    assert typed == ["show panic", "bt", "ps"]
    saved = (tmp_path / "debugger.txt").read_text()
    for cmd, out in ANSWERS.items():
        assert f"db> {cmd}\n{out}" in saved
    assert panic.value.verdict == "panic" and "panic: vm_fault_lookup" in panic.value.excerpt


def test_a_panic_without_ddb_keeps_the_kernel_report_up_to_the_reboot(tmp_path: Path) -> None:
    a, b = socket.socketpair()
    b.sendall(transcript("freebsd-panic-nodb.log").replace("\n", "\r\n").encode())
    con = Console(a.detach(), log_path=tmp_path / "console.log", timeout=5.0,
                  profile=GUEST_OSES["freebsd"].console)
    with pytest.raises(GuestPanic):
        con.expect("never-printed", timeout=5)
    con.close()
    b.close()
    saved = (tmp_path / "debugger.txt").read_text()
    assert saved.startswith("[no debugger prompt")
    assert "#6 0xffffffff82a41301 at vmmdev_ioctl+0x4f1" in saved
    assert "Automatic reboot in 15 seconds" in saved
    assert panic_text("root# ls\r\nFatal trap 12: page fault\r\n").startswith("Fatal trap 12")


def test_near_misses_are_not_panics() -> None:
    import re
    patterns = [re.compile(p, re.M) for p in GUEST_OSES["freebsd"].console.panic]
    for text in ("root@freebsd:~ # grep 'panic: ' /var/log/messages\n",
                 "kern.panic_reboot_wait_time: 15\n", "root@freebsd:~ # echo db>\n"):
        assert not any(p.search(text) for p in patterns), text


# -- a FreeBSD L1 with one bhyve VM, constructed --------------------------------------

SLOT = 0x10000                  # the scenario's slot: [0, 64K)
TOUCHED = {0x0: "x", 0x2000: "w", 0x3000: "r"}


def frame(gpa: int) -> int:
    return 0x2000000 + gpa


def world() -> World:
    """bhyve's structures, the VM's NPT, and the workload process (allproc -> its tables)."""
    spec = VmSpec(NAME, 0x400000, "svm", 0x600000, maps=[(0, 0x100000, 0, 0, 7)],
                  segs=[(0, 0x100000, True)])
    W = build_bhyve([spec])
    T = W.T
    leaves = [Spec(g, frame(g), 0x1000, True, a == "w", True) for g, a in TOUCHED.items()]
    build(W.phys, NptEncoder(), spec.root, 4, leaves)
    proc_root = 0x700000
    build(W.phys, NptEncoder(), proc_root, 4,
          [Spec(HVA + g, frame(g), 0x1000, True, True, False) for g in range(0, SLOT, 0x1000)])
    W.pages[ALLPROC & ~0xFFF] = 0x1F000
    proc, vmspace = 0x1E000, 0x1D000
    W.put(0x1F000 + (ALLPROC & 0xFFF) + T.off("proclist", "lh_first"), "<Q", dmap(proc))
    W.put(proc + T.off("proc", "p_pid"), "<i", PID)
    W.put(proc + T.off("proc", "p_vmspace"), "<Q", dmap(vmspace))
    W.put(vmspace + T.off("vmspace", "vm_pmap") + T.off("pmap", "pm_cr3"), "<Q", proc_root)
    return W


def view_of(W: World) -> KernelView:
    target = FakeTarget(W.phys, registers={"cs": 0x8}, virt=W.pages)
    return KernelView(target=target, arch=ARCHES["x86_64"], mem=l1_memories(target, [(0, MEM)]),
                      symbols={"cdevp_list": CDEVP_LIST, "allproc": ALLPROC}, types=W.T.ctf())


def test_observer_walks_the_vm_and_gives_the_model_its_facts() -> None:
    W = world()
    (ob,) = observe(view_of(W))
    assert (ob.format, ob.root) == ("npt", 0x600000)
    assert ob.params.top_slots == (0,)
    assert sorted((m.gpa, m.hpa, m.w) for m in ob.walk.mappings) == [
        (g, frame(g), a == "w") for g, a in sorted(TOUCHED.items())]
    assert ob.discovery["vm_name"] == NAME and ob.slot_hvas == frozenset()
    assert ob.slots == [{"id": 0, "gpa": 0, "size": 0x100000, "hva": 0, "kind": "ram",
                         "prot": "rwx", "segid": 0, "segoff": 0}]
    assert ob.model_options == {"format": "npt", "emulate_ad": False, "superpages": False}
    json.dumps(ob.discovery)                              # slat.json can hold it


def test_backing_is_the_workload_process_page_tables() -> None:
    W = world()
    view = view_of(W)
    back = freebsd_backing(BackingQuery(pid=PID, slots=((0, SLOT, HVA),), l1=view))
    assert back.pages == {g: frame(g) for g in range(0, SLOT, 0x1000)}
    with pytest.raises(InfraError, match="no process with pid 7"):
        freebsd_backing(BackingQuery(pid=7, slots=((0, SLOT, HVA),), l1=view))
    with pytest.raises(InfraError, match="needs the halted L1"):
        freebsd_backing(BackingQuery(pid=PID, slots=()))


# -- whole runs through the runner ------------------------------------------------------

def report(released: bool) -> str:
    lines = [{"event": "vm", "vm": 0, "pid": PID, "cycle": 0, "name": NAME},
             {"event": "slot", "vm": 0, "slot": 0, "gpa": 0, "size": SLOT, "hva": HVA,
              "flags": ""},
             {"event": "code", "vm": 0, "gpa": 0}, {"event": "exit", "vm": 0, "reason": "hlt"},
             {"event": "hold"}]
    if released:
        lines += [{"event": "destroyed", "vm": 0}, {"event": "done", "status": 0},
                  {"event": "exit_status", "status": 0}]
    return "".join("@@SLAT " + json.dumps(x, separators=(",", ":")) + "\n" for x in lines)


class FreeBsdWorld:
    """A scripted FreeBSD L1 whose CPU is *cpu* (an identcpu transcript)."""

    def __init__(self, cpu: str, load: str) -> None:
        self.W = world()
        self.released = False
        self.guest = FakeGuest([
            Rule(r"^grep -E .* /var/run/dmesg.boot$", transcript(cpu)),
            Rule(r"^kldload -n vmm", transcript(load)),
            Rule(r"^uname -r$", "14.3-RELEASE\n"),
            Rule(r"^rm -f .*mkfifo"), Rule(r"^\( slat-workload "), Rule(r"^echo \$!$", f"{PID}\n"),
            Rule(r"^i=0; while"), Rule(r"^unset exit_ i$"),
            Rule(r"^cat /tmp/slat-w1\.out$", answer=lambda m: (report(self.released), 0)),
            Rule(r"^echo go 1<>", answer=self.release)])

    def release(self, m: Any) -> tuple[str, int]:
        self.released = True
        self.W.put(0x1000 + (CDEVP_LIST & 0xFFF), "<Q", 0)      # vm_destroy: the cdev is gone
        return "", 0

    def services(self, tmp_path: Path) -> Services:
        base = default_services()
        image = Image(name="freebsd-amd64", arch="x86_64", dir=tmp_path, kernel=tmp_path / "k",
                      initrd=tmp_path / "i", modules=tmp_path, os="freebsd", ready="",
                      manifest={"files": {}, "login": {"user": "root", "password": ""}},
                      disk=tmp_path / "disk.qcow2", kernel_release="14.3-RELEASE")
        guest = replace(GUEST_OSES["freebsd"], symbols=lambda *a: {"cdevp_list": CDEVP_LIST,
                                                                   "allproc": ALLPROC},
                        types=lambda *a: self.W.T.ctf())
        machines: Registry[Any] = Registry("machine backend")
        machines.add("qemu", self.machine)
        return Services(_one(base.guests, guest), base.hypervisors, base.models, machines,
                        lambda name, progress: image)

    def machine(self, config: MachineConfig) -> ScriptedMachine:
        target = FakeTarget(self.W.phys, registers={"cs": 0x8}, virt=self.W.pages)
        return ScriptedMachine(config, self.guest, target, FREEBSD_BANNER,
                               prompt="root@freebsd:~ # ")


def _one(base: Registry[Any], record: Any) -> Registry[Any]:
    out: Registry[Any] = Registry(base.what)
    for name, rec in base.items():
        out.add(name, record if name == record.name else rec)
    return out


SCENARIO = """name: {name}
guest: {{os: freebsd, image: freebsd-amd64}}
machine: {{cpu: "max,-la57", memory: 64M}}
hypervisor: freebsd-bhyve-svm
{expect}steps:
  - boot: {{}}
  - workload:
      id: w1
      slots: [{{gpa: 0x0, size: 64K}}]
      touch: [{{gpa: 0x2000, access: w}}, {{gpa: 0x3000, access: r}}]
{middle}  - check: {{vms: 1}}
  - release: {{workload: w1}}
  - check: {{vms: 0}}
"""
INJECT = "  - inject: {kind: frame, gpa: 0x2000}\n"
NEGATIVE = "expect:\n  verdict: fail\n  findings:\n    - {kind: wrong_frame, gpa: 0x2000}\n"


def run(tmp_path: Path, name: str, cpu: str, load: str, expect: str = "", middle: str = ""
        ) -> Any:
    (tmp_path / f"{name}.yaml").write_text(SCENARIO.format(name=name, expect=expect,
                                                           middle=middle))
    fw = FreeBsdWorld(cpu, load)
    res = run_scenario(load_scenario(tmp_path / f"{name}.yaml"), tmp_path / "art",
                       services=fw.services(tmp_path))
    return res, fw


def test_a_bhyve_vm_on_a_cpu_with_nrip_save_passes(tmp_path: Path) -> None:
    res, fw = run(tmp_path, "bhyve-fake", "freebsd-identcpu-kvm-amd.log",
                  "freebsd-vmm-load-kvm-amd.log")
    assert (res.verdict, res.status) == ("pass", 0), res.message
    assert res.properties["hypervisor.bhyve.backend"] == "svm"
    slat = json.loads((res.artifacts / "slat.json").read_text())
    first = slat["checks"][0]["vms"][0]
    assert first["discovery"]["vm_name"] == NAME and len(first["mappings"]) == 3
    assert slat["checks"][1]["vms"] == []                     # destroyed: nothing left
    typed = fw.guest.typed                                     # the decision came first
    assert typed[0] == "uname -r" and typed[1].startswith("grep -E") and \
        typed[2].startswith("kldload -n vmm") and typed[3].startswith("rm -f")
    assert "login: root" in (res.artifacts / "console.log").read_text()


def test_an_injected_frame_is_a_wrong_frame_finding(tmp_path: Path) -> None:
    res, _fw = run(tmp_path, "bhyve-fake-inject", "freebsd-identcpu-kvm-amd.log",
                   "freebsd-vmm-load-kvm-amd.log", expect=NEGATIVE, middle=INJECT)
    assert (res.verdict, res.outcome, res.status) == ("fail", "xfailed", 0), res.message
    assert [f.kind for f in res.findings] == ["wrong_frame"]


def test_on_tcg_the_run_is_a_skip_in_junit_and_the_summary(tmp_path: Path) -> None:
    res, fw = run(tmp_path, "bhyve-fake-tcg", "freebsd-identcpu-tcg.log",
                  "freebsd-vmm-load-tcg.log")
    assert (res.verdict, res.outcome, res.status) == ("skip", "skipped", 0)
    assert res.failed_step == "step 1 (boot) at line 6"
    assert "NRIP save" in res.message
    assert not any(c.startswith("( slat-workload") for c in fw.guest.typed)
    write_junit([res], tmp_path / "j.xml")
    case = ET.parse(tmp_path / "j.xml").getroot().find(".//testcase")
    assert case is not None
    skipped = case.find("skipped")
    assert skipped is not None and "NRIP save" in (skipped.get("message") or "")
    assert summary([res])["outcomes"] == {"skipped": 1}
    assert "skip" in summary_table([res]) and "1 skipped" in summary_table([res])


# -- driver: bhyvectl, a VM no process made and no vCPU ran ----------------------------------

BHYVECTL = """name: {name}
guest: {{os: freebsd, image: freebsd-amd64}}
machine: {{cpu: "max,-la57", memory: 64M}}
hypervisor: freebsd-bhyve-svm
{expect}steps:
  - boot: {{}}
  - workload: {{id: w1, driver: bhyvectl, slots: [{{gpa: 0x0, size: 1M}}]}}
  - check: {{vms: 1}}
  - release: {{workload: w1}}
  - check: {{vms: 0}}
"""


class BhyvectlWorld(FreeBsdWorld):
    """vmm.ko with one VM ``slat-w1`` of *maps_len* bytes (``bhyvectl --set-mem=1`` leaves
    1 MiB), its nested tables empty; *stays*: ``--destroy`` removes the device node but
    the kernel keeps the VM on its list."""

    def __init__(self, maps_len: int = 0x100000, stays: bool = False) -> None:
        super().__init__("freebsd-identcpu-kvm-amd.log", "freebsd-vmm-load-kvm-amd.log")
        spec = VmSpec("slat-w1", 0x400000, "svm", 0x600000, maps=[(0, maps_len, 0, 0, 7)],
                      segs=[(0, maps_len, True)])
        self.W = build_bhyve([spec])
        self.stays = stays
        self.destroyed = False
        self.guest = FakeGuest([
            Rule(r"^grep -E .* /var/run/dmesg.boot$", transcript("freebsd-identcpu-kvm-amd.log")),
            Rule(r"^kldload -n vmm", transcript("freebsd-vmm-load-kvm-amd.log")),
            Rule(r"^uname -r$", "14.3-RELEASE\n"),
            Rule(r"^bhyvectl --vm=slat-w1 --destroy 2>/dev/null; true$"),
            Rule(r"^bhyvectl --vm=slat-w1 --create && bhyvectl --vm=slat-w1 --set-mem=1$"),
            Rule(r"^bhyvectl --vm=slat-w1 --destroy$", answer=self.destroy),
            Rule(r"^test -e /dev/vmm/slat-w1$", answer=lambda m: ("", 1 if self.destroyed
                                                                 else 0))])

    def destroy(self, m: Any) -> tuple[str, int]:
        self.destroyed = True
        if not self.stays:
            self.W.put(0x1000 + (CDEVP_LIST & 0xFFF), "<Q", 0)      # the cdev is gone
        return "", 0


def run_bhyvectl(tmp_path: Path, name: str, world: BhyvectlWorld, expect: str = "") -> Any:
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / f"{name}.yaml").write_text(BHYVECTL.format(name=name, expect=expect))
    return run_scenario(load_scenario(tmp_path / f"{name}.yaml"), tmp_path / "art",
                        services=world.services(tmp_path))


def test_a_bhyvectl_vm_is_found_by_name_with_libvmmapi_memory_map_and_no_leaves(
        tmp_path: Path) -> None:
    world = BhyvectlWorld()
    res = run_bhyvectl(tmp_path, "bhyvectl-fake", world)
    assert (res.verdict, res.status) == ("pass", 0), res.message
    slat = json.loads((res.artifacts / "slat.json").read_text())
    first = slat["checks"][0]["vms"][0]
    assert first["discovery"]["vm_name"] == "slat-w1" and first["mappings"] == []
    assert slat["checks"][1]["vms"] == []
    assert world.destroyed and "bhyvectl --vm=slat-w1 --destroy" in world.guest.typed
    assert not any(c.startswith("( slat-workload") for c in world.guest.typed)


def test_a_bhyvectl_vm_with_another_memory_map_or_left_behind_is_a_finding(
        tmp_path: Path) -> None:
    res = run_bhyvectl(tmp_path, "bhyvectl-map", BhyvectlWorld(maps_len=0x200000),
                       expect="expect:\n  verdict: fail\n  findings: [{kind: memmap}]\n")
    assert (res.verdict, res.outcome) == ("fail", "xfailed"), res.message
    (memmap,) = res.findings
    assert memmap.kind == "memmap" and memmap.expected == "libvmmapi's vm_setup_memory()"
    assert memmap.detail == "bhyvectl --set-mem 0x100000"
    assert "size is 0x200000, predicted 0x100000" in str(memmap.observed)
    res = run_bhyvectl(tmp_path / "b", "bhyvectl-stays", BhyvectlWorld(stays=True),
                       expect="expect:\n  verdict: fail\n  findings: [{kind: leftover}]\n")
    assert (res.verdict, res.outcome) == ("fail", "xfailed"), res.message
    assert [f.kind for f in res.findings] == ["leftover"]


@pytest.mark.parametrize("workload, message", [
    ("{driver: bhyvectl, slots: [{gpa: 0x1000, size: 1M}]}", "one slot {gpa: 0, size: S}"),
    ("{driver: bhyvectl, vms: 2, slots: [{gpa: 0x0, size: 1M}]}", "one VM once"),
    ("{driver: bhyvectl, slots: [{gpa: 0x0, size: 1M}], touch: [{gpa: 0x0, access: r}]}",
     "no touches"),
])
def test_bhyvectl_workloads_are_validated(tmp_path: Path, workload: str, message: str) -> None:
    from harness.errors import ScenarioError, ScenarioErrors
    (tmp_path / "s.yaml").write_text(
        "name: s\nguest: {os: freebsd, image: freebsd-amd64}\nhypervisor: freebsd-bhyve-svm\n"
        f"steps:\n  - boot: {{}}\n  - workload: {workload}\n")
    with pytest.raises((ScenarioError, ScenarioErrors), match=re.escape(message)):
        load_scenario(tmp_path / "s.yaml")
