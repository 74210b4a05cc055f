"""Whether bhyve can run on this FreeBSD L1: from its CPUID and vmm.ko's load result.

bhyve's ``vmm.ko`` refuses to load on a CPU without what its backend needs
(``sys/amd64/vmm/amd/svm.c`` ``svm_available``/``check_svm_features``, ``intel/vmx.c``
``vmx_modinit``), and says why on the console.  QEMU's TCG emulates SVM with nested
paging but not NRIP save, so on TCG the load fails with ``SVM: NRIP Save feature not
available.`` and a scenario that needs bhyve is *skipped*, naming the missing
feature.  The decision reads two things the L1 itself reports, never the
emulator's name:

* the CPUID the kernel printed at boot (``sys/x86/x86/identcpu.c``):
  ``  AMD Features2=0x...<...,SVM,...>`` and ``  SVM: NP,NRIP,...,NAsids=N``
  (``print_svm_info``: CPUID 8000_000A EDX bit 0 NP, bit 3 NRIP save), or
  ``  Features2=0x...<...,VMX,...>`` and ``  VT-x: PAT,HLT,...,EPT,UG,VPID``
  (``print_vmx_info``: EPT, unrestricted guest);
* the result of ``kldload -n vmm``: its exit status and the kernel's messages
  (``dmesg``), e.g. ``SVM: NRIP Save feature not available.``, ``SVM: disabled by
  BIOS.``, ``vmx_init: processor does not support desired secondary processor-based
  controls``, ``module_register_init: MOD_LOAD (vmm, ...) error 6``.

Both must tell the same story: vmm.ko refusing a feature the CPUID line shows, or
loading where the CPUID line lacks one, is an :class:`~harness.errors.InfraError`
(something else is wrong), as is a load failure with no reason the kernel gave.
On VMX the workload's L2 also needs unrestricted guest (it runs with paging off).

>>> cpu = parse_cpu("  AMD Features2=0x1<LAHF,SVM>\\n  SVM: NP,NAsids=16\\n")
>>> cpu.vendor, sorted(cpu.svm_features)
('AMD', ['NP'])
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from harness.errors import InfraError, SkipScenario

__all__ = ["CpuVirt", "VmmLoad", "Support", "parse_cpu", "parse_vmm_load", "decide",
           "SVM_REQUIRED", "VMX_REQUIRED", "IDENTCPU_GREP"]

# the lines of /var/run/dmesg.boot parse_cpu reads
IDENTCPU_GREP = r"grep -E '^CPU: |Origin=|Features2=|^  SVM: |^  VT-x: ' /var/run/dmesg.boot"
SVM_REQUIRED = {"NP": "nested paging (CPUID 8000_000A EDX bit 0)",
                "NRIP": "NRIP save (CPUID 8000_000A EDX bit 3)"}
VMX_REQUIRED = {"EPT": "EPT (secondary processor-based control 1)",
                "UG": "unrestricted guest (secondary control 7; the workload's L2 runs "
                      "with paging off)"}
# vmm.ko's words for each missing piece (svm.c, vmx.c)
VMM_REFUSALS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"SVM: NRIP Save feature not available\."), "NRIP"),
    (re.compile(r"SVM: Nested Paging feature not available\."), "NP"),
    (re.compile(r"SVM: disabled by BIOS\."), "SVM enabled (MSR VM_CR.SVMDIS is set)"),
    (re.compile(r"SVM: not available\."), "SVM"),
    (re.compile(r"vmx_(?:mod)?init: processor does not support VMX operation"), "VMX"),
    (re.compile(r"vmx_(?:mod)?init: VMX operation disabled by BIOS"),
     "VMX enabled (IA32_FEATURE_CONTROL)"),
    (re.compile(r"vmx_(?:mod)?init: processor does not support desired secondary "
                r"processor-based controls"), "EPT"),
    (re.compile(r"vmx_(?:mod)?init: (?P<why>.*)"), "VMX feature"),
)
FEATURES2 = re.compile(r"^\s+(?P<amd>AMD )?Features2=0x[0-9a-f]+<(?P<list>[^>]*)>", re.M)
SVM_LINE = re.compile(r"^\s+SVM: (?P<bios>\(disabled in BIOS\) )?(?P<list>\S+)", re.M)
VTX_LINE = re.compile(r"^\s+VT-x: (?P<bios>\(disabled in BIOS\) )?(?P<list>\S*)", re.M)
ORIGIN = re.compile(r'Origin="(?P<vendor>\w+)"')
STATUS = re.compile(r"^kldload-status (?P<status>\d+)$", re.M)


@dataclass(frozen=True)
class CpuVirt:
    """What the L1's CPUID says about hardware virtualization (identcpu's boot lines)."""

    vendor: str                          # "AMD", "Intel" or "" (Origin="AuthenticAMD"...)
    svm: bool                            # AMD Features2 lists SVM
    svm_features: frozenset[str]         # the "SVM:" line: NP, NRIP, VClean, AFlush, ...
    vmx: bool                            # Features2 lists VMX
    vmx_features: frozenset[str]         # the "VT-x:" line: PAT, HLT, MTF, PAUSE, EPT, UG...
    disabled_in_bios: bool = False


@dataclass(frozen=True)
class VmmLoad:
    """The result of ``kldload -n vmm`` and what the kernel said meanwhile."""

    status: int
    log: str


@dataclass(frozen=True)
class Support:
    """bhyve can run here, on this backend."""

    backend: str                         # "svm" or "vmx"
    features: tuple[str, ...]            # the virtualization features the CPUID showed


def parse_cpu(dmesg: str) -> CpuVirt:
    """The virtualization features in identcpu's boot lines (``/var/run/dmesg.boot``)."""
    vendor_m = ORIGIN.search(dmesg)
    vendor = {"AuthenticAMD": "AMD", "GenuineIntel": "Intel"}.get(
        vendor_m.group("vendor") if vendor_m else "", "")
    svm = vmx = False
    for m in FEATURES2.finditer(dmesg):
        names = set(m.group("list").split(","))
        svm |= bool(m.group("amd")) and "SVM" in names
        vmx |= not m.group("amd") and "VMX" in names
    svm_m, vtx_m = SVM_LINE.search(dmesg), VTX_LINE.search(dmesg)
    if vendor == "" and (svm or svm_m):
        vendor = "AMD"
    if vendor == "" and (vmx or vtx_m):
        vendor = "Intel"
    return CpuVirt(vendor, svm, _features(svm_m), vmx, _features(vtx_m),
                   bool((svm_m and svm_m.group("bios")) or (vtx_m and vtx_m.group("bios"))))


def _features(m: re.Match[str] | None) -> frozenset[str]:
    if m is None:
        return frozenset()
    return frozenset(f.split("=", 1)[0] for f in m.group("list").split(",") if f)


def parse_vmm_load(output: str) -> VmmLoad:
    """The result of :data:`harness.images.freebsd.VMM_LOAD_COMMAND`'s output."""
    m = STATUS.search(output)
    if m is None:
        raise InfraError(f"no kldload status in the output of the vmm load:\n{output[-2000:]}")
    return VmmLoad(int(m.group("status")), output)


def _missing(cpu: CpuVirt) -> tuple[str, list[str]]:
    """The backend this CPU would use and what it lacks for bhyve, by its CPUID lines."""
    if cpu.svm or cpu.svm_features:
        return "svm", [d for f, d in SVM_REQUIRED.items() if f not in cpu.svm_features]
    if cpu.vmx or cpu.vmx_features:
        return "vmx", [d for f, d in VMX_REQUIRED.items() if f not in cpu.vmx_features]
    return "", ["SVM or VMX (neither in CPUID)"]


def _refusal(log: str) -> str | None:
    """What vmm.ko said it misses, or None when it gave no reason."""
    for pattern, what in VMM_REFUSALS:
        m = pattern.search(log)
        if m:
            why = m.groupdict().get("why")
            return f"{what}: {why}" if why else what
    return None


def decide(cpu: CpuVirt, load: VmmLoad) -> Support:
    """Support, or SkipScenario naming what the CPU lacks (InfraError if the two disagree)."""
    backend, missing = _missing(cpu)
    refused = _refusal(load.log) if load.status != 0 else None
    if load.status == 0:
        if missing and backend == "svm":
            raise InfraError(f"vmm.ko loaded although the CPUID lines lack {missing}: the "
                             "boot dmesg does not describe this CPU")
        if missing:            # VMX without unrestricted guest: vmm.ko loads, the L2 cannot run
            raise SkipScenario(_message(backend, missing, None))
        return Support(backend, tuple(sorted(cpu.svm_features or cpu.vmx_features)))
    if refused is None:
        raise InfraError(f"kldload vmm failed (status {load.status}) without a reason from "
                         f"vmm.ko; the kernel said:\n{load.log[-2000:]}")
    if not missing and refused in SVM_REQUIRED:
        raise InfraError(f"vmm.ko reports {refused} missing, but the CPUID line shows it: "
                         f"{sorted(cpu.svm_features)}")
    raise SkipScenario(_message(backend, missing, refused))


def _message(backend: str, missing: list[str], refused: str | None) -> str:
    """Why bhyve cannot run here and where it can."""
    what = "; ".join(missing) if missing else refused or "a CPU feature"
    said = f"; vmm.ko: {refused!r} not available" if refused else ""
    where = ("a host whose KVM exposes nested SVM with NRIP save (machine.accel: kvm, "
             "kvm_amd nested=1)" if backend == "svm" else
             "a host with nested VMX, EPT and unrestricted guest (machine.accel: kvm, "
             "kvm_intel nested=1) or the Bochs machine")
    tcg = " (QEMU's TCG does not emulate NRIP save)" if "NRIP" in what else ""
    return f"bhyve cannot run on this L1 CPU: it lacks {what}{said}{tcg}; run on {where}"
