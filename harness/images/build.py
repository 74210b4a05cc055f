"""Build (or reuse) an image into the user's cache: :func:`build_image`.

Layout of ``$XDG_CACHE_HOME/slatcheck/images/<name>-<hash>/`` (default ``~/.cache``)::

    vmlinuz  initramfs.cpio.gz  modules/*.ko  slat-workload  manifest.json
    slatcheck.iso      (recipes with ``iso:``: an ISOLINUX CD-ROM of the two above)

The hash covers the recipe file, the workload sources and this builder's code,
so a change to any of them builds a new directory.  Concurrent builds of the same
image serialise on ``<name>-<hash>.lock``; each builds in a private temporary
directory beside the final one and renames it into place.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import InfraError
from harness.images import kmod
from harness.images.apt import AptContext, Package, sha256_file
from harness.images.host import run_tool
from harness.images.initramfs import READY_LINE, InitramfsContents, build_initramfs
from harness.images.iso import ISO_NAME, build_iso
from harness.images.recipe import WORKLOAD_DIR, Recipe, load_recipe
from harness.machines.base import BootSpec, CdromBoot, DiskBoot, KernelBoot

__all__ = ["BUILDER_VERSION", "Image", "cache_root", "image_hash", "build_image"]

BUILDER_VERSION = 1
_BUILDER_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Image:
    """A built L1 image: the files QEMU boots and what they were made from."""

    name: str                      # recipe name, e.g. "linux-amd64"
    arch: str                      # guest architecture as QEMU names it: "x86_64"
    dir: Path                      # the cache directory holding everything below
    kernel: Path                   # vmlinuz (for -kernel)
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

    def boot_spec(self, extra_append: str = "") -> BootSpec:
        """How a machine boots it: its disk; the kernel, the initramfs and the command
        line; or, for an image with a CD-ROM (for emulators without direct kernel boot),
        the ISO, whose command line is fixed at build time (*extra_append* is refused)."""
        if self.disk is not None:
            return DiskBoot(self.disk, self.disk_format)
        if self.iso is None:
            append = " ".join(filter(None, [self.append, extra_append]))
            return KernelBoot(self.kernel, self.initrd, append)
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
    return Image(name=recipe.name, arch=recipe.arch, dir=final,
                 kernel=final / "vmlinuz", initrd=final / "initramfs.cpio.gz",
                 modules=final / "modules", manifest=manifest,
                 kernel_release=manifest["kernel_release"], append=recipe.append,
                 console=recipe.console, prompt=recipe.prompt, os=recipe.os,
                 iso=final / ISO_NAME if (final / ISO_NAME).is_file() else None)


def _unpack(pkg: Package, dest: Path) -> Path:
    """``dpkg-deb -x`` a package into its own directory under *dest*."""
    root = dest / pkg.name
    root.mkdir(parents=True)
    run_tool(["dpkg-deb", "-x", str(pkg.path), str(root)])
    return root


def _kernel_release(kernel_root: Path) -> str:
    """The one ``lib/modules/<release>`` of an unpacked kernel package."""
    for base in (kernel_root / "lib" / "modules", kernel_root / "usr" / "lib" / "modules"):
        if base.is_dir():
            releases = sorted(p.name for p in base.iterdir() if p.is_dir())
            if len(releases) == 1:
                return releases[0]
    raise InfraError(f"cannot find one lib/modules/<release> in {kernel_root}")


def _moddir(kernel_root: Path, release: str) -> Path:
    """``lib/modules/<release>`` of the unpacked kernel (``usr/lib`` on merged-/usr)."""
    for base in (kernel_root / "lib", kernel_root / "usr" / "lib"):
        if (base / "modules" / release).is_dir():
            return base / "modules" / release
    raise InfraError(f"no modules directory for {release} in {kernel_root}")


def _fetch(recipe: Recipe, apt: AptContext, debs: Path,
           progress: Callable[[str], None]) -> list[Package]:
    """Download the kernel and the other packages; kernel first."""
    wanted = [apt.resolve_kernel(recipe.kernel), *recipe.packages]
    packages = []
    for what in wanted:
        progress(f"fetching {what} ({recipe.apt_architecture})")
        packages.append(apt.download(what, debs))
        progress(f"  got {packages[-1].filename}")
    return packages


Depends = Callable[[str], list[str]]


def _modules(recipe: Recipe, moddir: Path,
             progress: Callable[[str], None]) -> tuple[dict[str, Path], list[str], Depends]:
    """Module index of the kernel and the load closure of the recipe's modules."""
    index = kmod.index_modules(moddir)
    cache: dict[str, list[str]] = {}

    def depends(name: str) -> list[str]:
        if name not in index:
            raise InfraError(f"module {name!r} is not in the kernel package")
        if name not in cache:
            cache[name] = kmod.module_depends(moddir / index[name])
        return cache[name]

    order = kmod.module_closure([m.name for m in recipe.modules], depends)
    if order:
        progress(f"module closure: {' '.join(order)}")
    paths = {name: index[name] for name in order}
    return paths, order, depends


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
              progress: Callable[[str], None]) -> dict[str, Any]:
    """Fetch, unpack, compile and write every output file into *out*; the manifest."""
    apt = AptContext(recipe.apt_architecture, root / f"apt-{recipe.apt_architecture}")
    debs = work / "debs"
    debs.mkdir()
    packages = _fetch(recipe, apt, debs, progress)
    progress("unpacking")
    roots = [_unpack(pkg, work / "root") for pkg in packages]
    release = _kernel_release(roots[0])
    moddir = _moddir(roots[0], release)
    paths, order, depends = _modules(recipe, moddir, progress)
    kernel_src = roots[0] / recipe.kernel.image.format(release=release)
    if not kernel_src.is_file():
        raise InfraError(f"{packages[0].filename} has no {kernel_src.relative_to(roots[0])}")
    shutil.copyfile(kernel_src, out / "vmlinuz")
    (out / "modules").mkdir()
    for name in order:
        shutil.copyfile(moddir / paths[name], out / "modules" / paths[name].name)
    _compile_workload(recipe, out / "slat-workload", progress)
    busybox = _from_packages(roots[1:], recipe.busybox, recipe.name)
    progress("writing initramfs")
    contents = InitramfsContents(
        busybox=busybox.read_bytes(), workload=(out / "slat-workload").read_bytes(),
        kernel_release=release,
        modules={str(paths[n]): (moddir / paths[n]).read_bytes() for n in order},
        modules_dep=kmod.modules_dep(order, paths, depends))
    build_initramfs(recipe, contents, out / "initramfs.cpio.gz")
    if recipe.iso is not None:
        progress("writing ISOLINUX CD-ROM")
        build_iso(out / ISO_NAME, kernel=out / "vmlinuz", initrd=out / "initramfs.cpio.gz",
                  append=recipe.append, work=work,
                  isolinux_bin=_from_packages(roots[1:], recipe.iso.isolinux, recipe.name),
                  ldlinux_c32=_from_packages(roots[1:], recipe.iso.ldlinux, recipe.name))
    return {"packages": [p.manifest() for p in packages], "kernel_release": release,
            "modules": [{"name": n, "path": str(paths[n])} for n in order]}


def _manifest(recipe: Recipe, digest: str, out: Path, built: dict[str, Any]) -> None:
    """Write ``manifest.json`` with the hashes of the produced files."""
    names = ["vmlinuz", "initramfs.cpio.gz", "slat-workload"]
    names += [ISO_NAME] if recipe.iso is not None else []
    files = {name: sha256_file(out / name) for name in names}
    for ko in sorted((out / "modules").glob("*.ko*")):
        files[f"modules/{ko.name}"] = sha256_file(ko)
    manifest = {"recipe": recipe.name, "hash": digest, "builder_version": BUILDER_VERSION,
                "arch": recipe.arch, "append": recipe.append, **built, "files": files}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def build_image(name: str, progress: Callable[[str], None] = print,
                cache_dir: Path | None = None) -> Image:
    """Build the image *name* (an ``images/<name>/recipe.yaml``) or reuse the cached one.

    >>> image = build_image("linux-amd64")            # doctest: +SKIP
    >>> image.kernel.name, image.kernel_release       # doctest: +SKIP
    ('vmlinuz', '6.1.0-56-amd64')
    """
    recipe = load_recipe(name)
    digest = image_hash(recipe.path)
    root = cache_root(cache_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{name}-{digest}"
    with _locked(root / f"{name}-{digest}.lock"):
        if (final / "manifest.json").is_file():
            progress(f"image {name}: cached in {final}")
            return _image_from(recipe, final)
        progress(f"image {name}: building into {final}")
        with tempfile.TemporaryDirectory(prefix=f".{name}-{digest}.", dir=root) as tmp:
            out, work = Path(tmp) / "out", Path(tmp) / "work"
            out.mkdir()
            work.mkdir()
            _manifest(recipe, digest, out, _assemble(recipe, root, work, out, progress))
            os.rename(out, final)
    progress(f"image {name}: done")
    return _image_from(recipe, final)
