"""The kernel under test: where its files are, whether it has what slatcheck needs.

Besides the Debian package a recipe names, a kernel is given by path
(``slatcheck run --kernel PATH [--modules DIR]``, a recipe's or a scenario's
``kernel:``) in one of three forms, tried in :data:`KERNEL_FORMS` order:

``build-tree``
    a kernel build (``O=``) directory: ``.config``, ``include/config/kernel.release``,
    the boot image (``arch/x86/boot/bzImage``, ``arch/arm64/boot/Image``), ``vmlinux``
    (its ``.BTF`` are the types), with the modules of ``make modules_install
    INSTALL_MOD_PATH=DIR`` in ``--modules DIR``, in a sibling ``modules`` directory,
    or in the tree itself (``INSTALL_MOD_PATH`` = the tree);
``deb``
    a local ``linux-image-*.deb``;
``boot-image``
    a boot image file with ``--modules DIR`` and its configuration beside it
    (``config-<release>``, ``config`` or ``.config``).

Each resolves to :class:`KernelFiles`.  :func:`refuse_unfit` compares the kernel's
configuration with what the recipe requires (its ``kernel_config``) and refuses,
before anything boots, a kernel that lacks an option, naming every one it lacks:

>>> missing_options(parse_config("CONFIG_KVM=y\\n# CONFIG_KVM_AMD is not set\\n"),
...                 ["KVM", "KVM_AMD=m", "DEBUG_INFO_BTF"])
['CONFIG_KVM_AMD=m (is not set)', 'CONFIG_DEBUG_INFO_BTF (is not set)']
"""

from __future__ import annotations

import hashlib
import re
import subprocess
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from harness.errors import ScenarioError
from harness.images.apt import sha256_file
from harness.images.host import run_tool
from harness.images.kmod import SUFFIXES
from harness.images.recipe import KernelSource
from harness.registry import Registry

__all__ = [
    "KernelSource",
    "KernelFiles",
    "KernelForm",
    "KernelRefused",
    "KERNEL_FORMS",
    "TREE_BOOT_IMAGES",
    "locate_kernel",
    "parse_config",
    "config_facts",
    "release_facts",
    "CONFIG_FACTS",
    "missing_options",
    "refuse_unfit",
    "find_moddir",
    "kernel_release",
    "unpack_deb",
]

# guest architecture (QEMU's name) -> the boot image inside a build tree
TREE_BOOT_IMAGES: dict[str, str] = {
    "x86_64": "arch/x86/boot/bzImage",
    "aarch64": "arch/arm64/boot/Image",
}


class KernelRefused(ScenarioError):
    """The kernel given cannot serve as the L1: refused before anything boots."""


@dataclass(frozen=True)
class KernelFiles:
    """A located kernel: what the image builder copies and checks."""

    form: str                      # KERNEL_FORMS name, or "package"
    boot_image: Path               # what QEMU's -kernel boots
    release: str                   # `uname -r` of the kernel
    config: str                    # text of its .config
    moddir: Path | None            # its lib/modules/<release> (None: no modules)
    vmlinux: Path | None = None    # an ELF vmlinux whose .BTF are the types (else the boot image's)
    provenance: Mapping[str, str] = field(default_factory=dict)
    digest: str = ""               # SHA-256 over the boot image, the modules and the config


@dataclass(frozen=True)
class KernelForm:
    """One way of giving a kernel by path."""

    name: str
    description: str
    matches: Callable[[Path], bool]
    locate: Callable[[KernelSource, str, Path], KernelFiles]   # (source, arch, work dir)


def parse_config(text: str) -> dict[str, str]:
    """A ``.config`` as ``{"KVM": "y", ...}``; ``# CONFIG_X is not set`` lines are left out.

    >>> parse_config('CONFIG_A=y\\nCONFIG_B="x y"\\n# CONFIG_C is not set\\n')
    {'A': 'y', 'B': '"x y"'}
    """
    options: dict[str, str] = {}
    for line in text.splitlines():
        name, sep, value = line.strip().partition("=")
        if sep and name.startswith("CONFIG_"):
            options[name.removeprefix("CONFIG_")] = value
    return options


# numeric options observers need, handed to them as facts ("CONFIG_<NAME>")
CONFIG_FACTS = ("ARM64_VA_BITS",)


def config_facts(text: str) -> dict[str, int]:
    """The :data:`CONFIG_FACTS` a configuration sets, as ``{"CONFIG_NAME": value}``.

    >>> config_facts("CONFIG_ARM64_VA_BITS=52\\nCONFIG_KVM=y\\n")
    {'CONFIG_ARM64_VA_BITS': 52}
    """
    options = parse_config(text)
    return {f"CONFIG_{name}": int(options[name]) for name in CONFIG_FACTS
            if options.get(name, "").isdigit()}


def release_facts(release: str) -> dict[str, int]:
    """``LINUX_VERSION_CODE`` of a kernel release (``uname -r``), as a fact.

    >>> hex(release_facts("6.12.95+deb12-arm64")["LINUX_VERSION_CODE"])
    '0x60c5f'
    """
    m = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", release)
    if m is None:
        return {}
    major, minor, patch = (int(g or 0) for g in m.groups())
    return {"LINUX_VERSION_CODE": (major << 16) | (minor << 8) | min(patch, 255)}


def missing_options(config: Mapping[str, str], required: Iterable[str]) -> list[str]:
    """The required options (``NAME``: y or m; ``NAME=m``: exactly) *config* lacks."""
    missing = []
    for item in required:
        name, sep, want = item.partition("=")
        have = config.get(name, "n")
        ok = have == want if sep else have in ("y", "m")
        if not ok:
            shown = "is not set" if have == "n" else f"is {have}"
            missing.append(f"CONFIG_{item} ({shown})")
    return missing


def refuse_unfit(files: KernelFiles, required: Sequence[str], where: str) -> None:
    """KernelRefused naming every option of *required* the kernel's config lacks."""
    missing = missing_options(parse_config(files.config), required)
    if missing:
        raise KernelRefused(
            f"kernel {where} ({files.release}) lacks what slatcheck needs, by its "
            f"configuration: {', '.join(missing)}; rebuild it with these options")


def _digest(boot_image: Path, moddir: Path | None, config: str) -> str:
    """SHA-256 over the boot image, every module file and the configuration."""
    h = hashlib.sha256(b"boot\0" + sha256_file(boot_image).encode())
    if moddir is not None:
        for path in sorted(moddir.rglob("*.ko*")):
            if path.is_file() and path.name.endswith(SUFFIXES):
                rel = path.relative_to(moddir).as_posix()
                h.update(f"\0{rel}\0{sha256_file(path)}".encode())
    h.update(b"\0config\0" + config.encode())
    return h.hexdigest()


def find_moddir(root: Path, release: str) -> Path | None:
    """``lib/modules/<release>`` under *root* (an INSTALL_MOD_PATH or a package), or
    *root* itself when it is that directory."""
    for base in (root / "lib" / "modules", root / "usr" / "lib" / "modules"):
        if (base / release).is_dir():
            return base / release
    if root.name == release and root.is_dir():
        return root
    return None


def kernel_release(root: Path) -> str:
    """The one ``lib/modules/<release>`` under *root* (or *root* being one)."""
    for base in (root / "lib" / "modules", root / "usr" / "lib" / "modules"):
        if base.is_dir():
            releases = sorted(p.name for p in base.iterdir() if p.is_dir())
            if len(releases) == 1:
                return releases[0]
    if (root / "modules.order").is_file() or (root / "kernel").is_dir():
        return root.name
    raise KernelRefused(f"cannot find one lib/modules/<release> in {root}")


def _git_describe(tree: Path) -> str | None:
    """``git describe --always --dirty`` of the tree's source (kbuild's ``source`` link)."""
    src = tree / "source" if (tree / "source").exists() else tree
    try:
        proc = subprocess.run(["git", "-C", str(src), "describe", "--always", "--dirty"],
                              capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout.strip() or None if proc.returncode == 0 else None


def _is_tree(path: Path) -> bool:
    return path.is_dir() and (path / ".config").is_file()


def _tree_modules(source: KernelSource, release: str) -> Path | None:
    """Where the tree's modules were installed: --modules, a sibling ``modules``, the tree."""
    roots = [source.modules] if source.modules else [source.path.parent / "modules",
                                                      source.path]
    for root in roots:
        found = find_moddir(root, release)
        if found is not None:
            return found
    if source.modules is not None:
        raise KernelRefused(f"{source.modules} holds no lib/modules/{release} (run make "
                            f"modules_install INSTALL_MOD_PATH={source.modules})")
    return None


def _locate_tree(source: KernelSource, arch: str, work: Path) -> KernelFiles:
    """A build (``O=``) directory."""
    tree = source.path
    rel_file = tree / "include" / "config" / "kernel.release"
    if not rel_file.is_file():
        raise KernelRefused(f"{tree} is not a built kernel tree: no "
                            "include/config/kernel.release (run make first)")
    release = rel_file.read_text().strip()
    image = tree / TREE_BOOT_IMAGES.get(arch, f"<no boot image known for {arch}>")
    if not image.is_file():
        raise KernelRefused(f"{tree} has no {image.relative_to(tree)} for {arch} "
                            "(make bzImage / make Image)")
    config = (tree / ".config").read_text()
    moddir = _tree_modules(source, release)
    vmlinux = tree / "vmlinux" if (tree / "vmlinux").is_file() else None
    prov = {"form": "build-tree", "path": str(tree), "release": release,
            "config_sha256": hashlib.sha256(config.encode()).hexdigest()}
    described = _git_describe(tree)
    if described:
        prov["git_describe"] = described
    return KernelFiles("build-tree", image, release, config, moddir, vmlinux, prov,
                       _digest(image, moddir, config))


def unpack_deb(deb: Path, dest: Path) -> Path:
    """``dpkg-deb -x`` a package into the new directory *dest*."""
    dest.mkdir(parents=True)
    run_tool(["dpkg-deb", "-x", str(deb), str(dest)])
    return dest


def _package_config(root: Path, release: str, what: str) -> str:
    config = root / "boot" / f"config-{release}"
    if not config.is_file():
        raise KernelRefused(f"{what} has no boot/config-{release}: its configuration "
                            "cannot be checked")
    return config.read_text()


def _locate_deb(source: KernelSource, arch: str, work: Path) -> KernelFiles:
    """A local ``linux-image-*.deb``."""
    root = unpack_deb(source.path, work / "kernel-deb")
    try:
        release = kernel_release(root)
    except KernelRefused:
        raise KernelRefused(f"{source.path}: no lib/modules/<release> inside: not a kernel "
                            "package (a linux-image-*.deb, e.g. from `apt-get download "
                            "linux-image-6.1.0-54-amd64-unsigned`)") from None
    image = root / "boot" / f"vmlinuz-{release}"
    if not image.is_file():
        raise KernelRefused(f"{source.path.name} has no boot/vmlinuz-{release}")
    config = _package_config(root, release, source.path.name)
    fields = run_tool(["dpkg-deb", "-f", str(source.path), "Package", "Version"])
    info = dict(line.split(": ", 1) for line in fields.strip().splitlines())
    sha = sha256_file(source.path)
    prov = {"form": "deb", "filename": source.path.name, "sha256": sha,
            "package": info.get("Package", ""), "version": info.get("Version", ""),
            "release": release}
    return KernelFiles("deb", image, release, config, find_moddir(root, release), None,
                       prov, hashlib.sha256(f"deb\0{sha}".encode()).hexdigest())


def _boot_image_config(image: Path, release: str) -> str:
    for name in (f"config-{release}", "config", ".config"):
        if (image.parent / name).is_file():
            return (image.parent / name).read_text()
    raise KernelRefused(f"no configuration beside {image}: put its .config there as "
                        f"config-{release}, config or .config, so it can be checked")


def _locate_boot_image(source: KernelSource, arch: str, work: Path) -> KernelFiles:
    """A boot image file with ``--modules DIR``."""
    if source.modules is None:
        raise KernelRefused(f"{source.path} is a boot image: give its modules with "
                            "--modules DIR (what make modules_install put there)")
    release = kernel_release(source.modules)
    moddir = find_moddir(source.modules, release)
    config = _boot_image_config(source.path, release)
    prov = {"form": "boot-image", "filename": source.path.name, "release": release,
            "sha256": sha256_file(source.path),
            "config_sha256": hashlib.sha256(config.encode()).hexdigest()}
    return KernelFiles("boot-image", source.path, release, config, moddir, None, prov,
                       _digest(source.path, moddir, config))


KERNEL_FORMS: Registry[KernelForm] = Registry("kernel form")
KERNEL_FORMS.add("build-tree", KernelForm(
    "build-tree", "a kernel build (O=) directory with .config, the boot image and vmlinux",
    _is_tree, _locate_tree))
KERNEL_FORMS.add("deb", KernelForm(
    "deb", "a local linux-image-*.deb", lambda p: p.is_file() and p.suffix == ".deb",
    _locate_deb))
KERNEL_FORMS.add("boot-image", KernelForm(
    "boot-image", "a boot image file with --modules DIR and its .config beside it",
    lambda p: p.is_file() and p.suffix != ".deb", _locate_boot_image))
_ORDER = ("build-tree", "deb", "boot-image")


def locate_kernel(source: KernelSource, arch: str, work: Path) -> KernelFiles:
    """The files of *source* by the first form it matches; KernelRefused if none does."""
    if not source.path.exists():
        raise KernelRefused(f"kernel {source.path}: no such file or directory")
    for name in _ORDER:
        form = KERNEL_FORMS[name]
        if form.matches(source.path):
            return form.locate(source, arch, work)
    raise KernelRefused(f"kernel {source.path} is none of: " + "; ".join(
        f"{n} ({KERNEL_FORMS[n].description})" for n in _ORDER))
