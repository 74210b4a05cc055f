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

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

from harness.result import ScenarioResult

__all__ = ["Origin", "origin_of", "origins", "origin_lines", "kernel_source", "qemu_version"]

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

    def machine(self) -> str:
        """``QEMU 8.2.1, accelerator tcg, L1 CPU max`` (unknown parts left out)."""
        return ", ".join(p for p in (self.emulator, self.accel and f"accelerator {self.accel}",
                                     self.cpu and f"L1 CPU {self.cpu}") if p)

    def kernel_line(self) -> str:
        """``L1 kernel 6.12.0 from the tree v6.12`` (empty when not known)."""
        if not self.kernel:
            return ""
        return f"L1 kernel {self.kernel}" + (f" from {self.kernel_from}"
                                             if self.kernel_from else "")

    def lines(self) -> list[str]:
        """Three lines at most: machine, kernel, slatcheck (unknown parts left out)."""
        return origin_lines([self])

    def to_json(self) -> dict[str, str]:
        """The JSON form (``compare --format json``)."""
        return asdict(self)


# provenance["kernel"] spellings: key -> the one used here, and form -> source
_KEYS = {"form": "source", "name": "package", "git_describe": "describe", "filename": "file",
         "path": "file"}
_SOURCES = {"build-tree": "tree", "boot-image": "image"}


def _short(sha: object) -> str:
    return str(sha)[:12] if sha else ""


def kernel_source(kernel: dict[str, Any]) -> str:
    """Where a kernel came from, from ``provenance["kernel"]`` (only the keys that apply;
    ``form``/``name``/``git_describe``/``filename`` are read as ``source``/``package``/
    ``describe``/``file``).

    >>> kernel_source({"source": "package", "package": "linux-image-6.12.9-amd64",
    ...                "version": "6.12.9-1"})
    'the Debian package linux-image-6.12.9-amd64 6.12.9-1'
    >>> kernel_source({"form": "deb", "filename": "linux-image.deb", "sha256": "cd" * 32})
    'the package file linux-image.deb (sha256 cdcdcdcdcdcd)'
    >>> kernel_source({"form": "build-tree", "git_describe": "v6.12-3-gabc",
    ...                "config_sha256": "ab" * 32})
    'the tree v6.12-3-gabc (config sha256 abababababab)'
    """
    k = {_KEYS.get(key, key): v for key, v in kernel.items() if v}
    source = _SOURCES.get(str(k.get("source", "")), str(k.get("source", "")))
    package = " ".join(str(k[x]) for x in ("package", "version") if x in k)
    sha, config = _short(k.get("sha256")), _short(k.get("config_sha256"))
    if source == "tree":
        return f"the tree {k.get('describe') or k.get('file') or '?'}" + \
            (f" (config sha256 {config})" if config else "")
    if source in ("deb", "image"):
        notes = ", ".join(x for x in (package if source == "deb" else "",
                                      sha and f"sha256 {sha}",
                                      config and f"config sha256 {config}") if x)
        what = "package file" if source == "deb" else "boot image"
        return f"the {what} {k.get('file') or package or '?'}" + (f" ({notes})" if notes
                                                                    else "")
    return f"the Debian package {package}" if package else ""


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
        emulator=" ".join(x for x in (_EMULATORS.get(emulator, emulator),
                                      qemu_version(version) if emulator == "qemu" else version)
                          if x),
        accel=machine.get("accel", ""), cpu=machine.get("cpu", ""),
        kernel=kernel.get("release") or props.get("guest.uname")
        or props.get("image.kernel_release", ""),
        kernel_from=kernel_source(kernel) if kernel else _kernel_from_properties(props),
        slatcheck=" ".join(x for x in (tool.get("version", ""),
                                       f"(commit {short})" if commit else "") if x))


def origins(results: Sequence[ScenarioResult]) -> list[Origin]:
    """The distinct origins of *results*, in order of first appearance."""
    return list(dict.fromkeys(origin_of(r) for r in results))


def origin_lines(found: Sequence[Origin]) -> list[str]:
    """The lines of several origins, each said once: the machines (one per CPU model, say),
    then the kernels, then the slatcheck versions.

    >>> a, b = Origin("QEMU 8.2.1", "tcg", "max", "6.1.0"), Origin("QEMU 8.2.1", "tcg",
    ...                                                           "max,-la57", "6.1.0")
    >>> origin_lines([a, b])
    ['QEMU 8.2.1, accelerator tcg, L1 CPUs max; max,-la57', 'L1 kernel 6.1.0']
    """
    machines = [_machines(found, o) for o in found]
    kernels = [o.kernel_line() for o in found]
    tools = [f"slatcheck {o.slatcheck}" if o.slatcheck else "" for o in found]
    return [x for x in dict.fromkeys(machines + kernels + tools) if x]


def _machines(found: Sequence[Origin], o: Origin) -> str:
    """*o*'s machine line, naming every CPU model of the origins on the same emulator."""
    cpus = list(dict.fromkeys(x.cpu for x in found
                              if (x.emulator, x.accel) == (o.emulator, o.accel) and x.cpu))
    if len(cpus) < 2:
        return o.machine()
    return replace(o, cpu="").machine() + f", L1 CPUs {'; '.join(cpus)}"


def qemu_version(version: str) -> str:
    """QEMU's version with its package string apart (QMP gives them run together).

    >>> qemu_version("7.2.22Debian 1:7.2+dfsg-7+deb12u18+b3"), qemu_version("8.2.1")
    ('7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)', '8.2.1')
    """
    m = re.fullmatch(r"(\d+(?:\.\d+)*)\s*(\S.*)?", version)
    return f"{m.group(1)} ({m.group(2)})" if m and m.group(2) else version
