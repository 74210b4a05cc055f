"""Build (or reuse) an image into the user's cache: :func:`build_image`.

Layout of ``$XDG_CACHE_HOME/slatcheck/images/<name>-<hash>/`` (default ``~/.cache``)::

    vmlinuz  vmlinux.btf  config  initramfs.cpio.gz  modules/*.ko  slat-workload  manifest.json
    slatcheck.iso      (recipes with ``iso:``: an ISOLINUX CD-ROM of the two above)
    vmlinux            (recipes with ``entry: pvh``: the uncompressed kernel QEMU boots)

The hash covers the recipe file, the workload sources and this builder's code,
so a change to any of them builds a new directory; with a kernel given by path
(``--kernel``), also the kernel's content (boot image, modules, configuration),
so a rebuilt kernel gets a new image.  ``vmlinux.btf`` holds the kernel's types
(from its ``vmlinux`` or its boot image), ``config`` its configuration; modules are
kept decompressed.
Concurrent builds of the same image serialise on ``<name>-<hash>.lock``; each
builds in a private temporary directory beside the final one and renames it into
place.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from harness.errors import InfraError
from harness.images import kmod
from harness.images.apt import AptContext, Package, sha256_file
from harness.images.host import run_tool
from harness.images.initramfs import READY_LINE, InitramfsContents, build_initramfs
from harness.images.iso import ISO_NAME, build_iso
from harness.images.kernel import (
    KernelFiles,
    KernelRefused,
    find_moddir,
    kernel_release,
    locate_kernel,
    refuse_unfit,
    unpack_deb,
)
from harness.images.recipe import WORKLOAD_DIR, KernelSource, Recipe, load_recipe
from harness.kernel_image import boot_elf, btf_section, extract_vmlinux, pvh_entry, raw_image_btf
from harness.machines.base import BootSpec, CdromBoot, DiskBoot, KernelBoot

__all__ = ["BUILDER_VERSION", "Image", "cache_root", "image_hash", "build_image"]

BUILDER_VERSION = 3
VMLINUX = "vmlinux"            # the uncompressed kernel of an ``entry: pvh`` image
_BUILDER_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Image:
    """A built L1 image: the files QEMU boots and what they were made from."""

    name: str                      # recipe name, e.g. "linux-amd64"
    arch: str                      # guest architecture as QEMU names it: "x86_64"
    dir: Path                      # the cache directory holding everything below
    kernel: Path                   # vmlinuz, or vmlinux for entry: pvh (for -kernel)
    initrd: Path                   # initramfs.cpio.gz (for -initrd)
    modules: Path                  # directory of the .ko files loaded in the guest
    manifest: dict[str, Any] = field(compare=False, hash=False)
    kernel_release: str = ""       # e.g. "6.1.0-56-amd64"
    append: str = ""               # kernel command line
    console: str = "ttyS0"         # guest console device
    prompt: str = "slat# "         # shell prompt on the console
    ready: str = READY_LINE        # console line after which typing is safe ("" = none)
    os: str = "linux"              # the guest OS it holds (GUEST_OSES name)
    disk: Path | None = None       # a disk image booted through the firmware (BSD guests)
    disk_format: str = "qcow2"
    iso: Path | None = None        # ISOLINUX CD-ROM of kernel and initramfs (recipes with iso:)
    packaged: Path | None = None   # entry: pvh: the packaged bzImage, for 5-level machines

    def boot_spec(self, extra_append: str = "", five_level: bool = False) -> BootSpec:
        """How a machine boots it: its disk; the kernel, the initramfs and the command
        line; or, for an image with a CD-ROM (for emulators without direct kernel boot),
        the ISO, whose command line is fixed at build time (*extra_append* is refused).
        A machine with 5-level paging (*five_level*: LA57) boots the packaged bzImage
        even for ``entry: pvh``: Linux's PVH entry starts in 4-level paging, and only
        the bzImage's decompressor switches to 5 levels."""
        if self.disk is not None:
            return DiskBoot(self.disk, self.disk_format)
        if self.iso is None:
            append = " ".join(filter(None, [self.append, extra_append]))
            kernel = self.packaged if five_level and self.packaged is not None else self.kernel
            return KernelBoot(kernel, self.initrd, append)
        if extra_append:
            raise InfraError(f"image {self.name} boots from a CD-ROM whose command line is "
                             f"fixed at build time: guest.append {extra_append!r} cannot "
                             "be added")
        return CdromBoot(self.iso)


def cache_root(cache_dir: Path | None = None) -> Path:
    """``<cache>/slatcheck/images``; *cache* defaults to $XDG_CACHE_HOME or ~/.cache."""
    if cache_dir is None:
        xdg = os.environ.get("XDG_CACHE_HOME")
        cache_dir = Path(xdg) if xdg else Path.home() / ".cache"
    return cache_dir / "slatcheck" / "images"


def _tree_files(root: Path) -> Iterator[Path]:
    """Every regular file under *root*, sorted, skipping caches."""
    for path in sorted(root.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            yield path


def image_hash(recipe_path: Path, workload_dir: Path = WORKLOAD_DIR,
               builder_dir: Path = _BUILDER_DIR) -> str:
    """12 hex digits of SHA-256 over the recipe, the workload sources and the builder."""
    digest = hashlib.sha256(f"builder {BUILDER_VERSION}\n".encode())
    digest.update(b"recipe\0" + recipe_path.read_bytes())
    for label, root in (("workload", workload_dir), ("builder", builder_dir)):
        for path in _tree_files(root):
            rel = path.relative_to(root).as_posix()
            digest.update(f"\0{label}/{rel}\0".encode() + path.read_bytes())
    return digest.hexdigest()[:12]


@contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on *lock_path*."""
    with lock_path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _image_from(recipe: Recipe, final: Path) -> Image:
    """The :class:`Image` of a finished build directory."""
    manifest = json.loads((final / "manifest.json").read_text())
    pvh = manifest.get("entry") == "pvh"
    return Image(name=recipe.name, arch=recipe.arch, dir=final,
                 kernel=final / (VMLINUX if pvh else "vmlinuz"),
                 packaged=final / "vmlinuz" if pvh else None,
                 initrd=final / "initramfs.cpio.gz",
                 modules=final / "modules", manifest=manifest,
                 kernel_release=manifest["kernel_release"], append=recipe.append,
                 console=recipe.console, prompt=recipe.prompt, os=recipe.os,
                 iso=final / ISO_NAME if (final / ISO_NAME).is_file() else None)


def _unpack(pkg: Package, dest: Path) -> Path:
    """``dpkg-deb -x`` a package into its own directory under *dest*."""
    return unpack_deb(pkg.path, dest / pkg.name)


def _fetch(recipe: Recipe, apt: AptContext, debs: Path, wanted: list[str],
           progress: Callable[[str], None]) -> list[Package]:
    """Download packages with *apt*."""
    packages = []
    for what in wanted:
        progress(f"fetching {what} ({recipe.apt_architecture})")
        packages.append(apt.download(what, debs))
        progress(f"  got {packages[-1].filename}")
    return packages


def _package_kernel(recipe: Recipe, root: Path, work: Path,
                    progress: Callable[[str], None]) -> tuple[KernelFiles, Package]:
    """The recipe's Debian kernel package, fetched (from its suite, if it names one)
    and unpacked."""
    spec = recipe.kernel
    arch = recipe.apt_architecture
    state = root / (f"apt-{arch}" if spec.suite is None else f"apt-{arch}-{spec.suite}")
    apt = AptContext(arch, state, spec.suite, spec.mirror)
    (work / "debs").mkdir(exist_ok=True)
    pkg = _fetch(recipe, apt, work / "debs", [apt.resolve_kernel(spec)], progress)[0]
    kroot = _unpack(pkg, work / "root")
    release = kernel_release(kroot)
    image = kroot / spec.image.format(release=release)
    if not image.is_file():
        raise InfraError(f"{pkg.filename} has no {image.relative_to(kroot)}")
    config = kroot / "boot" / f"config-{release}"
    prov = {"form": "package", "name": pkg.name, "version": pkg.version, "release": release}
    files = KernelFiles("package", image, release,
                        config.read_text() if config.is_file() else "",
                        find_moddir(kroot, release), None, prov)
    if config.is_file():
        refuse_unfit(files, recipe.kernel_config, pkg.filename)
    return files, pkg


def _link_tree(src: Path, dst: Path) -> None:
    """The module files of *src* under *dst*, hard-linked where possible (never the
    ``build``/``source`` links modules_install leaves)."""
    for path in sorted(src.rglob("*")):
        rel = path.relative_to(src)
        if rel.parts[0] in ("build", "source") or not path.is_file():
            continue
        if not (path.name.endswith(kmod.SUFFIXES) or path.name.startswith("modules.")):
            continue
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, dst / rel)
        except OSError:
            shutil.copyfile(path, dst / rel)


def _write_entry(recipe: Recipe, out: Path, progress: Callable[[str], None],
                 elf: bytes | None = None) -> str:
    """How QEMU will enter the kernel: for ``entry: pvh`` write the uncompressed
    ``vmlinux`` (*elf*, if the boot image was already decompressed) when it has a PVH
    entry, else say why the boot image is used."""
    if recipe.entry != "pvh":
        return "image"
    vmlinux = elf if elf is not None else extract_vmlinux((out / "vmlinuz").read_bytes())
    if pvh_entry(vmlinux) is None:
        progress("the kernel has no PVH entry (CONFIG_PVH): booting its compressed image")
        return "image"
    (out / VMLINUX).write_bytes(vmlinux)
    return "pvh"


def _vmlinux_btf(files: KernelFiles, out: Path) -> bytes | None:
    """``vmlinux.btf`` (the types) from the kernel's vmlinux or boot image; a kernel
    without BTF is refused here, before anything boots.  Returns the boot image's
    uncompressed ELF when it was read from it (None: the tree's vmlinux, an arm64
    Image), so that it is decompressed once."""
    elf = None
    try:
        if files.vmlinux is not None:
            btf = btf_section(files.vmlinux.read_bytes())
        else:
            image = files.boot_image.read_bytes()
            elf = boot_elf(image)
            btf = raw_image_btf(image) if elf is None else btf_section(elf)
    except InfraError as exc:
        where = files.vmlinux or files.boot_image
        raise KernelRefused(f"kernel {where} carries no BTF (CONFIG_DEBUG_INFO_BTF): "
                            f"{exc}") from exc
    (out / "vmlinux.btf").write_bytes(btf)
    return elf


def _install_modules(recipe: Recipe, files: KernelFiles, work: Path, out: Path,
                     progress: Callable[[str], None]) -> InitramfsModules:
    """The recipe's modules and what they need (``depmod``), decompressed into
    ``out/modules``; what goes into the initramfs."""
    names = [m.name for m in recipe.modules]
    if not names:
        return {}, ""
    if files.moddir is None:
        raise KernelRefused(f"kernel {files.release} comes with no modules, and "
                            f"{recipe.name} loads {', '.join(names)}: give the modules "
                            "directory (--modules DIR, make modules_install)")
    root = work / "depmod"
    _link_tree(files.moddir, root / "lib" / "modules" / files.release)
    deps = kmod.depmod(root, files.release)
    order = kmod.load_order(deps, names)
    progress(f"module closure (depmod): {' '.join(kmod.module_name(p) for p in order)}")
    moddir = root / "lib" / "modules" / files.release
    contents = {}
    for rel in order:
        data = kmod.module_elf(moddir / rel)
        contents[str(kmod.plain_name(rel))] = data
        (out / "modules" / kmod.plain_name(rel).name).write_bytes(data)
    return contents, kmod.modules_dep(deps, order)


InitramfsModules = tuple[dict[str, bytes], str]


def _compile_workload(recipe: Recipe, out: Path, progress: Callable[[str], None]) -> None:
    """Compile the static workload binary."""
    spec = recipe.workload
    progress(f"compiling workload with {spec.cc}")
    sources = [str(WORKLOAD_DIR / s) for s in spec.sources]
    run_tool([spec.cc, *spec.cflags, "-o", str(out), *sources], packages=spec.cc_packages)


def _from_packages(roots: list[Path], rel: str, image: str) -> Path:
    """The file *rel* in the first unpacked package holding it."""
    for root in roots:
        if (root / rel).is_file():
            return root / rel
    raise InfraError(f"no package of {image} holds {rel}")


def _assemble(recipe: Recipe, root: Path, work: Path, out: Path,
              progress: Callable[[str], None], files: KernelFiles | None) -> dict[str, Any]:
    """Fetch, unpack, compile and write every output file into *out*; the manifest.
    *files* is a kernel given by path (None: the recipe's Debian package)."""
    kernel_pkgs: list[Package] = []
    if files is None:
        files, pkg = _package_kernel(recipe, root, work, progress)
        kernel_pkgs = [pkg]
    apt = AptContext(recipe.apt_architecture, root / f"apt-{recipe.apt_architecture}")
    (work / "debs").mkdir(exist_ok=True)
    packages = _fetch(recipe, apt, work / "debs", list(recipe.packages), progress)
    progress("unpacking")
    roots = [_unpack(pkg, work / "root") for pkg in packages]
    shutil.copyfile(files.boot_image, out / "vmlinuz")
    (out / "config").write_text(files.config)
    elf = _vmlinux_btf(files, out)
    entry = _write_entry(recipe, out, progress, elf)
    (out / "modules").mkdir()
    modules, modules_dep = _install_modules(recipe, files, work, out, progress)
    _compile_workload(recipe, out / "slat-workload", progress)
    busybox = _from_packages(roots, recipe.busybox, recipe.name)
    progress("writing initramfs")
    contents = InitramfsContents(
        busybox=busybox.read_bytes(), workload=(out / "slat-workload").read_bytes(),
        kernel_release=files.release, modules=modules, modules_dep=modules_dep)
    build_initramfs(recipe, contents, out / "initramfs.cpio.gz")
    if recipe.iso is not None:
        progress("writing ISOLINUX CD-ROM")
        build_iso(out / ISO_NAME, kernel=out / "vmlinuz", initrd=out / "initramfs.cpio.gz",
                  append=recipe.append, work=work,
                  isolinux_bin=_from_packages(roots, recipe.iso.isolinux, recipe.name),
                  ldlinux_c32=_from_packages(roots, recipe.iso.ldlinux, recipe.name))
    return {"packages": [p.manifest() for p in [*kernel_pkgs, *packages]], "entry": entry,
            "kernel_release": files.release, "kernel": dict(files.provenance),
            "modules": [{"name": kmod.module_name(p), "path": p} for p in sorted(modules)]}


def _manifest(recipe: Recipe, digest: str, out: Path, built: dict[str, Any]) -> None:
    """Write ``manifest.json`` with the hashes of the produced files."""
    names = ["vmlinuz", "initramfs.cpio.gz", "slat-workload"]
    names += [VMLINUX] if built.get("entry") == "pvh" else []
    names += [ISO_NAME] if recipe.iso is not None else []
    files = {name: sha256_file(out / name) for name in names}
    for ko in sorted((out / "modules").glob("*.ko*")):
        files[f"modules/{ko.name}"] = sha256_file(ko)
    manifest = {"recipe": recipe.name, "hash": digest, "builder_version": BUILDER_VERSION,
                "arch": recipe.arch, "append": recipe.append, **built, "files": files}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def build_image(name: str, progress: Callable[[str], None] = print,
                cache_dir: Path | None = None, kernel: KernelSource | None = None) -> Image:
    """Build the image *name* (an ``images/<name>/recipe.yaml``) or reuse the cached one.

    *kernel* replaces the recipe's kernel (a build tree, a .deb or a boot image,
    :mod:`harness.images.kernel`); an unfit one is refused before anything is built.
    The cache key then also covers the kernel's content.

    >>> image = build_image("linux-amd64")            # doctest: +SKIP
    >>> image.kernel.name, image.kernel_release       # doctest: +SKIP
    ('vmlinuz', '6.1.0-56-amd64')
    """
    recipe = load_recipe(name)
    source = kernel or recipe.kernel.source
    root = cache_root(cache_dir)
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{name}.", dir=root) as tmp:
        files = None
        digest = image_hash(recipe.path)
        if source is not None:
            files = locate_kernel(source, recipe.arch, Path(tmp) / "kernel")
            refuse_unfit(files, recipe.kernel_config, str(source.path))
            digest = hashlib.sha256(f"{digest}\0{files.digest}".encode()).hexdigest()[:12]
        final = root / f"{name}-{digest}"
        with _locked(root / f"{name}-{digest}.lock"):
            if (final / "manifest.json").is_file():
                progress(f"image {name}: cached in {final}")
                return _given(_image_from(recipe, final), files)
            progress(f"image {name}: building into {final}")
            out, work = Path(tmp) / "out", Path(tmp) / "work"
            out.mkdir()
            work.mkdir()
            _manifest(recipe, digest, out, _assemble(recipe, root, work, out, progress, files))
            os.rename(out, final)
    progress(f"image {name}: done")
    return _given(_image_from(recipe, final), files)


def _given(image: Image, files: KernelFiles | None) -> Image:
    """*image* with the provenance of the kernel as given this time: an image is shared
    by every source of the same content (a tree, its boot image and modules), and each
    run records where its own kernel came from."""
    if files is None:
        return image
    return replace(image, manifest={**image.manifest, "kernel": dict(files.provenance)})
