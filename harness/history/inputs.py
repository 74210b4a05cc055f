"""What a run was run with, read from its provenance and properties (pure).

A run's *inputs* are the scenario, the kernel's identity, the QEMU version and the
machine: two runs with the same inputs should give the same verdict, so a
scenario that both passes and fails with the same inputs is flaky.

The kernel's identity is its release, and what says which build it is: the
``provenance["kernel"]`` record's ``describe`` (a git build) or ``package=version``
(a distribution's), else the image's ``linux-image-*`` package from the
properties; and the first 12 digits of its configuration's SHA-256 when known.

>>> kernel_identity({"release": "6.1.0-28-amd64", "package": "linux-image-6.1.0-28-amd64",
...                  "version": "6.1.119-1", "config_sha256": "ab" * 32}, {})
'6.1.0-28-amd64 linux-image-6.1.0-28-amd64=6.1.119-1 config:abababababab'
>>> kernel_identity({}, {"image.kernel_release": "6.1.0-fake"})
'6.1.0-fake'
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["Inputs", "inputs_of", "kernel_identity", "packages_of"]

KERNEL_PACKAGE = "package.linux-image-"


@dataclass(frozen=True)
class Inputs:
    """What one run depended on, besides slatcheck itself."""

    kernel_release: str
    kernel: dict[str, Any]       # provenance["kernel"] as recorded ({} when absent)
    kernel_id: str               # kernel_identity()
    packages: dict[str, str]     # image package -> version
    qemu_version: str
    machine: str                 # emulator and CPU model
    accel: str

    def key(self, scenario: str) -> str:
        """The inputs as one string: scenario, kernel, QEMU version, machine."""
        return " | ".join((scenario, self.kernel_id, self.qemu_version,
                           f"{self.machine} {self.accel}".strip()))


def packages_of(props: dict[str, str]) -> dict[str, str]:
    """``package.NAME`` properties (``VERSION sha256:...``) as NAME -> VERSION."""
    return {k.removeprefix("package."): v.split(" ", 1)[0]
            for k, v in sorted(props.items()) if k.startswith("package.")}


def _build(kernel: dict[str, Any], props: dict[str, str]) -> str:
    """Where the kernel came from: a tree's ``git describe``, a package (a recipe's or a
    .deb's) and version, a file's SHA-256 (``provenance.kernel`` as the image builder
    writes it: harness.images.kernel)."""
    describe = kernel.get("git_describe") or kernel.get("describe")
    if describe:
        return str(describe)
    package = kernel.get("name") if kernel.get("form") == "package" else kernel.get("package")
    if package and kernel.get("version"):
        return f"{package}={kernel['version']}"
    if kernel.get("sha256"):
        return f"{kernel.get('filename', 'file')} sha256:{str(kernel['sha256'])[:12]}"
    for key, val in sorted(props.items()):
        if key.startswith(KERNEL_PACKAGE):
            return f"{key.removeprefix('package.')}={val.split(' ', 1)[0]}"
    return ""


def kernel_identity(kernel: dict[str, Any], props: dict[str, str]) -> str:
    """Release, build and configuration of the guest kernel (see the module)."""
    release = str(kernel.get("release") or props.get("image.kernel_release")
                  or props.get("guest.uname") or "unknown")
    cfg = str(kernel.get("config_sha256") or "")
    parts = [release, _build(kernel, props), f"config:{cfg[:12]}" if cfg else ""]
    return " ".join(p for p in parts if p)


def inputs_of(provenance: dict[str, Any], props: dict[str, str]) -> Inputs:
    """The inputs of a run from its ``provenance`` and ``properties``."""
    kernel = provenance.get("kernel") if isinstance(provenance.get("kernel"), dict) else {}
    machine = provenance.get("machine") if isinstance(provenance.get("machine"), dict) else {}
    assert isinstance(kernel, dict) and isinstance(machine, dict)
    release = str(kernel.get("release") or props.get("image.kernel_release")
                  or props.get("guest.uname") or "")
    emulator = str(machine.get("emulator", ""))
    return Inputs(kernel_release=release, kernel=kernel,
                  kernel_id=kernel_identity(kernel, props), packages=packages_of(props),
                  qemu_version=str(machine.get("version", "")),
                  machine=" ".join(p for p in (emulator, str(machine.get("cpu", ""))) if p),
                  accel=str(machine.get("accel", "")))
