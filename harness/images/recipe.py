"""Image recipes: ``images/<name>/recipe.yaml`` parsed into a frozen :class:`Recipe`.

A recipe is data only; an architecture is added by writing a new recipe (apt
architecture, kernel metapackage, modules to load, compiler, console), not code.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from harness.errors import InfraError
from harness.registry import Registry

__all__ = [
    "IMAGES_DIR",
    "WORKLOAD_DIR",
    "IMAGES",
    "ModuleLoad",
    "KernelSource",
    "KernelSpec",
    "IsoSpec",
    "WorkloadSpec",
    "Recipe",
    "parse_recipe",
    "load_recipe",
    "ImageFacts",
    "image_facts",
]

def _images_dir() -> Path:
    """``images/`` of the checkout, or the installed package data ``harness.recipes``."""
    checkout = Path(__file__).resolve().parents[2] / "images"
    if (checkout / "workload").is_dir():
        return checkout
    spec = importlib.util.find_spec("harness.recipes")
    if spec is None or not spec.submodule_search_locations:
        raise InfraError("slatcheck is installed without its image recipes (harness.recipes)")
    return Path(next(iter(spec.submodule_search_locations)))


IMAGES_DIR = _images_dir()
DEBIAN_MIRROR = "http://deb.debian.org/debian"
WORKLOAD_DIR = IMAGES_DIR / "workload"


@dataclass(frozen=True)
class ModuleLoad:
    """One ``modprobe`` run by ``/init``: module name and its parameters."""

    name: str          # kernel module name, e.g. "kvm_amd"
    params: str = ""   # e.g. "nested=1 npt=1"


@dataclass(frozen=True)
class KernelSource:
    """A kernel under test given by path (:mod:`harness.images.kernel` has its forms);
    *modules* is where ``modules_install`` put its modules (the ``INSTALL_MOD_PATH`` or
    its ``lib/modules/<release>``)."""

    path: Path
    modules: Path | None = None


@dataclass(frozen=True)
class KernelSpec:
    """Which kernel: a Debian package to fetch, or one given by path (``path:``)."""

    metapackage: str | None = None  # e.g. "linux-image-amd64"; its Depends names the build
    prefer_unsigned: bool = True   # take "<package>-unsigned" when the mirror has it
    package: str | None = None     # pin: exact package, skips the metapackage
    version: str | None = None     # pin: exact version of that package
    image: str = "boot/vmlinuz-{release}"   # kernel file inside the package
    suite: str | None = None       # take it from this suite (bookworm-backports), not the host's
    mirror: str = DEBIAN_MIRROR    # the archive holding *suite*
    source: KernelSource | None = None  # a build tree, a .deb or a boot image (path: / modules:)


@dataclass(frozen=True)
class IsoSpec:
    """A bootable ISOLINUX CD-ROM holding the kernel and the initramfs.

    For emulators without direct kernel boot (Bochs): the kernel command line is
    written into ``isolinux.cfg``.  The two boot files come from Debian packages
    listed in the recipe's ``packages`` (``isolinux``, ``syslinux-common``).
    """

    isolinux: str = "usr/lib/ISOLINUX/isolinux.bin"           # in package isolinux
    ldlinux: str = "usr/lib/syslinux/modules/bios/ldlinux.c32"  # in syslinux-common


@dataclass(frozen=True)
class WorkloadSpec:
    """How the workload is compiled."""

    cc: str                        # compiler command, e.g. "gcc"
    cc_packages: tuple[str, ...]   # Debian packages that provide it (and libc.a)
    cflags: tuple[str, ...]
    sources: tuple[str, ...]       # files of images/workload/


@dataclass(frozen=True)
class Recipe:
    """A parsed ``recipe.yaml``; ``path`` is the file it came from."""

    name: str
    arch: str                      # guest architecture as QEMU names it: "x86_64", "aarch64"
    apt_architecture: str          # Debian architecture: "amd64", "arm64"
    kernel: KernelSpec
    packages: tuple[str, ...]      # further packages (busybox-static)
    busybox: str                   # busybox path inside its package
    modules: tuple[ModuleLoad, ...]
    workload: WorkloadSpec
    console: str                   # guest console device: "ttyS0", "ttyAMA0"
    append: str                    # kernel command line
    prompt: str                    # shell prompt (PS1) on the console
    os: str = "linux"              # the guest OS the image holds (GUEST_OSES name)
    hypervisor: str | None = None  # HYPERVISORS name this image is made for (None: the default)
    iso: IsoSpec | None = None     # also build an ISOLINUX CD-ROM (boot through the firmware)
    kernel_config: tuple[str, ...] = ()  # options the kernel must have: NAME (y or m), NAME=m
    entry: str = "image"           # how QEMU enters the kernel: one of ENTRIES
    path: Path = field(default=Path(), compare=False)


# "image": the boot image as packaged (a bzImage: decompressed by the guest, with KASLR);
# "pvh": x86-64 only, the uncompressed vmlinux through its PVH entry (CONFIG_PVH): no
# decompression under TCG (seconds), no KASLR; a kernel without the entry boots "image".
ENTRIES = ("image", "pvh")


def _need(doc: dict[str, Any], key: str, where: str) -> Any:
    """``doc[key]``, or an InfraError naming the recipe and the key."""
    if key not in doc:
        raise InfraError(f"{where}: missing key {key!r}")
    return doc[key]


def _local_path(value: Any, base: Path) -> Path | None:
    """A recipe's path: ``~`` expanded, relative to the recipe's directory."""
    return None if value is None else base / Path(str(value)).expanduser()


def _kernel(doc: dict[str, Any], where: str, base: Path) -> KernelSpec:
    """The ``kernel:`` block: a Debian package (``metapackage`` or ``package``) or a
    kernel by ``path`` (with ``modules``)."""
    path = _local_path(doc.get("path"), base)
    source = None if path is None else KernelSource(path, _local_path(doc.get("modules"), base))
    if source is None and "package" not in doc:
        _need(doc, "metapackage", f"{where}: kernel")
    return KernelSpec(
        metapackage=_opt_str(doc.get("metapackage")),
        prefer_unsigned=bool(doc.get("prefer_unsigned", True)),
        package=doc.get("package"), version=doc.get("version"),
        image=str(doc.get("image", "boot/vmlinuz-{release}")),
        suite=_opt_str(doc.get("suite")), mirror=str(doc.get("mirror", DEBIAN_MIRROR)),
        source=source)


def _workload(doc: dict[str, Any], where: str) -> WorkloadSpec:
    """The ``workload:`` block."""
    cc = str(_need(doc, "cc", f"{where}: workload"))
    return WorkloadSpec(
        cc=cc, cc_packages=tuple(doc.get("cc_packages", [cc])),
        cflags=tuple(doc.get("cflags", ["-static", "-O2"])),
        sources=tuple(_need(doc, "sources", f"{where}: workload")))


def _modules(items: list[Any]) -> tuple[ModuleLoad, ...]:
    """The ``modules:`` list: names or ``{name, params}`` mappings."""
    loads = []
    for item in items or []:
        if isinstance(item, str):
            loads.append(ModuleLoad(item))
        else:
            loads.append(ModuleLoad(str(item["name"]), str(item.get("params", ""))))
    return tuple(loads)


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _iso(doc: Any) -> IsoSpec | None:
    """The optional ``iso:`` block (``iso: {}`` takes Debian's default paths)."""
    if doc is None:
        return None
    if not isinstance(doc, dict):
        raise InfraError("iso: a mapping with optional 'isolinux' and 'ldlinux' paths")
    default = IsoSpec()
    return IsoSpec(isolinux=str(doc.get("isolinux", default.isolinux)),
                   ldlinux=str(doc.get("ldlinux", default.ldlinux)))


def parse_recipe(text: str, where: str = "recipe", base: Path = Path()) -> Recipe:
    """Parse the YAML text of a recipe; *where* names it in errors, relative paths are
    taken from *base*."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InfraError(f"{where}: {exc}") from exc
    if not isinstance(doc, dict):
        raise InfraError(f"{where}: not a mapping")
    return Recipe(
        name=str(_need(doc, "name", where)), arch=str(_need(doc, "arch", where)),
        apt_architecture=str(_need(doc, "apt_architecture", where)),
        kernel=_kernel(_need(doc, "kernel", where), where, base),
        kernel_config=tuple(str(o) for o in doc.get("kernel_config", [])),
        packages=tuple(doc.get("packages", [])),
        busybox=str(doc.get("busybox", "bin/busybox")),
        modules=_modules(doc.get("modules", [])),
        workload=_workload(_need(doc, "workload", where), where),
        console=str(_need(doc, "console", where)),
        append=str(_need(doc, "append", where)),
        prompt=str(doc.get("prompt", "slat# ")), os=str(doc.get("os", "linux")),
        hypervisor=_opt_str(doc.get("hypervisor")), iso=_iso(doc.get("iso")),
        entry=_entry(doc, where))


def _entry(doc: dict[str, Any], where: str) -> str:
    """The ``entry:`` key, one of ENTRIES; "pvh" only for an x86-64 kernel booted by QEMU."""
    entry = str(doc.get("entry", "image"))
    if entry not in ENTRIES:
        raise InfraError(f"{where}: entry: {entry!r} is not one of {', '.join(ENTRIES)}")
    if entry == "pvh" and (doc.get("arch") != "x86_64" or doc.get("iso") is not None):
        raise InfraError(f"{where}: entry: pvh needs arch x86_64 and no iso: (it is QEMU's "
                         "direct boot of an x86-64 vmlinux)")
    return entry


def load_recipe(name: str) -> Recipe:
    """The recipe registered as *name*; unknown names list the valid ones."""
    path = IMAGES[name]
    recipe = parse_recipe(path.read_text(), str(path), path.parent)
    if recipe.name != name:
        raise InfraError(f"{path}: name {recipe.name!r} does not match directory {name!r}")
    return replace(recipe, path=path)


@dataclass(frozen=True)
class ImageFacts:
    """What validation needs of an image before anything is built."""

    name: str
    os: str                        # GUEST_OSES name of the guest it holds
    arch: str                      # "x86_64", "aarch64"
    builder: str                   # how it is made ("debian-initramfs", ...)
    hypervisor: str | None = None  # the hypervisor it is made for (None: the OS/arch default)


def image_facts(name: str) -> ImageFacts:
    """The OS, architecture and builder of image *name*, read from its recipe's header."""
    path = IMAGES[name]
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise InfraError(f"{path}: {exc}") from exc
    if not isinstance(doc, dict) or "arch" not in doc:
        raise InfraError(f"{path}: a recipe is a mapping with at least 'arch'")
    return ImageFacts(name, str(doc.get("os", "linux")), str(doc["arch"]),
                      str(doc.get("builder", "debian-initramfs")),
                      _opt_str(doc.get("hypervisor")))


def _discover() -> Registry[Path]:
    """Registry of every ``images/<name>/recipe.yaml``."""
    registry: Registry[Path] = Registry("image")
    for path in sorted(IMAGES_DIR.glob("*/recipe.yaml")):
        registry.add(path.parent.name, path)
    return registry


IMAGES: Registry[Path] = _discover()
