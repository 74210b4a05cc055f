"""Where a recorded run came from, as a person reads it: emulator, L1 CPU, L1 kernel, slatcheck.

Read from the result's ``provenance`` (``machine``, ``slatcheck`` and, when the run
booted a kernel under test, ``kernel``); a run recorded before ``provenance["kernel"]``
existed falls back to its ``properties`` (the kernel release, and the Debian kernel
package from the image manifest).

>>> from pathlib import Path
>>> from harness.result import ScenarioResult
>>> r = ScenarioResult("x", Path("x.yaml"), provenance={
...     "machine": {"emulator": "qemu", "version": "8.2.1", "accel": "tcg", "cpu": "max"},
...     "kernel": {"release": "6.12.0", "source": "tree", "describe": "v6.12-3-gabc",
...                "config_sha256": "ab" * 32},
...     "slatcheck": {"version": "0.1.0", "commit": "0123456789abcdef"}})
>>> print("\\n".join(origin_of(r).lines()))
QEMU 8.2.1, accelerator tcg, L1 CPU max
L1 kernel 6.12.0 from the tree v6.12-3-gabc (config sha256 abababababab)
slatcheck 0.1.0 (commit 0123456789ab)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from harness.result import ScenarioResult

__all__ = ["Origin", "origin_of", "origins", "kernel_source"]

_EMULATORS = {"qemu": "QEMU", "bochs": "Bochs"}
_KERNEL_PACKAGE = "package.linux-image"


@dataclass(frozen=True)
class Origin:
    """One run's environment; an empty field is not known (a run that never booted)."""

    emulator: str = ""     # "QEMU 8.2.1"
    accel: str = ""        # "tcg", "kvm"
    cpu: str = ""          # the L1's CPU model as given to the emulator
    kernel: str = ""       # the L1 kernel's release (uname -r)
    kernel_from: str = ""  # "the Debian package linux-image-... 6.1.192-3", "the tree v6.12-..."
    slatcheck: str = ""    # "0.1.0 (commit 0123456789ab)"

    def lines(self) -> list[str]:
        """Three lines at most: machine, kernel, slatcheck (unknown parts left out)."""
        machine = ", ".join(p for p in (self.emulator, self.accel and f"accelerator {self.accel}",
                                        self.cpu and f"L1 CPU {self.cpu}") if p)
        kernel = f"L1 kernel {self.kernel}" + (f" from {self.kernel_from}"
                                               if self.kernel_from else "")
        return [x for x in (machine, kernel if self.kernel else "",
                            f"slatcheck {self.slatcheck}" if self.slatcheck else "") if x]

    def to_json(self) -> dict[str, str]:
        """The JSON form (``compare --format json``)."""
        return asdict(self)


def kernel_source(kernel: dict[str, Any]) -> str:
    """Where a kernel came from, from ``provenance["kernel"]`` (only the keys that apply).

    >>> kernel_source({"source": "package", "package": "linux-image-6.12.9-amd64",
    ...                "version": "6.12.9-1"})
    'the Debian package linux-image-6.12.9-amd64 6.12.9-1'
    >>> kernel_source({"source": "deb", "file": "linux-image.deb", "sha256": "cd" * 32})
    'the package file linux-image.deb (sha256 cdcdcdcdcdcd)'
    """
    source = kernel.get("source", "")
    if source == "tree":
        sha = str(kernel.get("config_sha256") or "")
        what = f"the tree {kernel.get('describe') or kernel.get('file') or '?'}"
        return what + (f" (config sha256 {sha[:12]})" if sha else "")
    if source == "deb":
        sha = str(kernel.get("sha256") or "")
        name = " ".join(str(x) for x in (kernel.get("package") or kernel.get("file"),
                                        kernel.get("version")) if x)
        return f"the package file {name}" + (f" (sha256 {sha[:12]})" if sha else "")
    if kernel.get("package"):
        return " ".join(["the Debian package", str(kernel["package"]),
                         str(kernel.get("version", ""))]).strip()
    return ""


def _kernel_from_properties(props: dict[str, str]) -> str:
    """The Debian kernel package the image was built from (``package.linux-image-*``)."""
    for key, value in sorted(props.items()):
        if key.startswith(_KERNEL_PACKAGE):
            return f"the Debian package {key.removeprefix('package.')} {value.split()[0]}"
    return ""


def origin_of(res: ScenarioResult) -> Origin:
    """The :class:`Origin` of one recorded result."""
    prov, props = res.provenance, res.properties
    machine = prov.get("machine") or {}
    kernel = prov.get("kernel") or {}
    emulator = machine.get("emulator", "")
    version = machine.get("version", "")
    tool = prov.get("slatcheck") or {}
    commit = str(tool.get("commit") or "")
    short = commit[:12] + ("-dirty" if commit.endswith("-dirty") else "")
    return Origin(
        emulator=" ".join(x for x in (_EMULATORS.get(emulator, emulator), version) if x),
        accel=machine.get("accel", ""), cpu=machine.get("cpu", ""),
        kernel=kernel.get("release") or props.get("guest.uname")
        or props.get("image.kernel_release", ""),
        kernel_from=kernel_source(kernel) if kernel else _kernel_from_properties(props),
        slatcheck=" ".join(x for x in (tool.get("version", ""),
                                       f"(commit {short})" if commit else "") if x))


def origins(results: Sequence[ScenarioResult]) -> list[Origin]:
    """The distinct origins of *results*, in order of first appearance."""
    return list(dict.fromkeys(origin_of(r) for r in results))
