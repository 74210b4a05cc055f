"""Installed disk images, built once and cached: the part every BSD image builder shares.

A BSD L1 is not assembled from packages like the Linux initramfs: it is
installed from the release's own media into a disk, customised at its first
boot, and kept.  Every run then boots a throw-away overlay of that disk
(:class:`~harness.machines.base.DiskBoot`).  Layout of
``<cache>/slatcheck/images/<name>-<hash>/``::

    disk.qcow2      the installed, customised disk (never written by a run)
    kernel          the kernel every boot of the disk runs (symbols and types come from it)
    manifest.json   recipe, hash, login, files and digests, how the image was made

The hash covers the recipe file and the workload sources (the guest compiles
them at its first boot), not the harness's code: an install takes an hour and
a change to the harness must not throw it away.  A build serialises on
``<name>-<hash>.lock`` and renames a private directory into place, as the
Linux builder does.  :func:`import_disk_image` puts a disk installed elsewhere
(with its kernel) into the same place.

A recipe of a disk image is a mapping with at least ``name``, ``os``, ``arch``
and ``builder``; :class:`DiskRecipe` keeps the rest for the builder.

>>> r = parse_disk_recipe("name: x\\nos: openbsd\\narch: x86_64\\nbuilder: b\\n")
>>> (r.prompt, r.login_user, r.memory >> 20)
('# ', 'root', 1024)
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from harness.errors import InfraError
from harness.images.build import Image, _locked, cache_root
from harness.images.recipe import IMAGES, WORKLOAD_DIR
from harness.sizes import parse_size

__all__ = ["DiskRecipe", "parse_disk_recipe", "load_disk_recipe", "disk_image_hash",
           "disk_image_dir", "cached_disk_image", "install_disk_image", "import_disk_image",
           "disk_image_of", "DISK", "KERNEL", "MANIFEST"]

DISK = "disk.qcow2"
KERNEL = "kernel"
MANIFEST = "manifest.json"
DISK_IMAGE_VERSION = 1


@dataclass(frozen=True)
class DiskRecipe:
    """A disk image's recipe: what every disk builder reads, and the rest as data."""

    name: str
    os: str                         # GUEST_OSES name
    arch: str                       # "x86_64"
    builder: str                    # IMAGE_BUILDERS name
    release: str = ""               # the OS release installed
    console: str = "com0"           # the guest's console device, for provenance
    prompt: str = "# "              # root's shell prompt
    login_user: str = "root"
    login_password: str = ""
    cpu: str = "max"                # the CPU the image is installed and customised on
    memory: int = 1 << 30           # bytes, for the install and first boot
    disk_size: int = 8 << 30        # bytes of the installed disk
    data: dict[str, Any] = field(default_factory=dict, compare=False)   # the whole mapping
    path: Path = field(default=Path(), compare=False)


def _size(doc: dict[str, Any], key: str, default: int, where: str) -> int:
    if key not in doc:
        return default
    try:
        return parse_size(doc[key])
    except (ValueError, TypeError) as exc:
        raise InfraError(f"{where}: {key}: {exc}") from exc


def parse_disk_recipe(text: str, where: str = "recipe") -> DiskRecipe:
    """Parse a disk image recipe; a missing key or a bad size is an InfraError."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InfraError(f"{where}: {exc}") from exc
    if not isinstance(doc, dict):
        raise InfraError(f"{where}: not a mapping")
    for key in ("name", "os", "arch", "builder"):
        if key not in doc:
            raise InfraError(f"{where}: missing key {key!r}")
    login = doc.get("login") or {}
    return DiskRecipe(
        name=str(doc["name"]), os=str(doc["os"]), arch=str(doc["arch"]),
        builder=str(doc["builder"]), release=str(doc.get("release", "")),
        console=str(doc.get("console", "com0")), prompt=str(doc.get("prompt", "# ")),
        login_user=str(login.get("user", "root")),
        login_password=str(login.get("password", "")), cpu=str(doc.get("cpu", "max")),
        memory=_size(doc, "memory", 1 << 30, where),
        disk_size=_size(doc, "disk_size", 8 << 30, where), data=doc)


def load_disk_recipe(name: str) -> DiskRecipe:
    """The recipe of image *name* (``images/<name>/recipe.yaml``)."""
    path = IMAGES[name]
    recipe = parse_disk_recipe(path.read_text(), str(path))
    if recipe.name != name:
        raise InfraError(f"{path}: name {recipe.name!r} does not match directory {name!r}")
    return DiskRecipe(**{**recipe.__dict__, "path": path})


def disk_image_hash(recipe_path: Path, workload_dir: Path = WORKLOAD_DIR) -> str:
    """12 hex digits of SHA-256 over the recipe and the workload sources."""
    digest = hashlib.sha256(f"disk image {DISK_IMAGE_VERSION}\n".encode())
    digest.update(b"recipe\0" + recipe_path.read_bytes())
    for path in sorted(p for p in workload_dir.rglob("*") if p.is_file()):
        rel = path.relative_to(workload_dir).as_posix()
        digest.update(f"\0workload/{rel}\0".encode() + path.read_bytes())
    return digest.hexdigest()[:12]


def disk_image_dir(recipe: DiskRecipe, cache_dir: Path | None = None) -> Path:
    """Where image *recipe* is (or will be) cached."""
    return cache_root(cache_dir) / f"{recipe.name}-{disk_image_hash(recipe.path)}"


def disk_image_of(recipe: DiskRecipe, final: Path) -> Image:
    """The :class:`Image` of a finished disk image directory."""
    manifest = json.loads((final / MANIFEST).read_text())
    return Image(name=recipe.name, arch=recipe.arch, dir=final, kernel=final / KERNEL,
                 initrd=Path(os.devnull), modules=final, manifest=manifest,
                 kernel_release=str(manifest.get("release", recipe.release)),
                 console=recipe.console, prompt=recipe.prompt, ready="",
                 os=recipe.os, disk=final / DISK, disk_format="qcow2")


def cached_disk_image(recipe: DiskRecipe, cache_dir: Path | None = None) -> Image | None:
    """The cached image, or None when it was never built or imported."""
    final = disk_image_dir(recipe, cache_dir)
    if (final / MANIFEST).is_file() and (final / DISK).is_file():
        return disk_image_of(recipe, final)
    return None


# the builder's part: given a private directory, write DISK and KERNEL there and return
# what goes into the manifest beside the common keys
Make = Callable[[Path], dict[str, Any]]


def install_disk_image(recipe: DiskRecipe, make: Make, cache_dir: Path | None = None,
                       progress: Callable[[str], None] = print) -> Image:
    """The cached image, or run *make* in a private directory and move its result in."""
    final = disk_image_dir(recipe, cache_dir)
    final.parent.mkdir(parents=True, exist_ok=True)
    with _locked(final.parent / f"{final.name}.lock"):
        image = cached_disk_image(recipe, cache_dir)
        if image is not None:
            progress(f"image {recipe.name}: cached in {final}")
            return image
        progress(f"image {recipe.name}: building into {final}")
        with tempfile.TemporaryDirectory(prefix=f".{final.name}.", dir=final.parent) as tmp:
            out = Path(tmp) / "out"
            out.mkdir()
            extra = make(out)
            _finish(recipe, out, extra)
            os.rename(out, final)
    progress(f"image {recipe.name}: done")
    return disk_image_of(recipe, final)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _finish(recipe: DiskRecipe, out: Path, extra: dict[str, Any]) -> None:
    """Check the builder left a disk and a kernel; write the manifest."""
    for name in (DISK, KERNEL):
        if not (out / name).is_file():
            raise InfraError(f"image {recipe.name}: the builder left no {name}")
    manifest = {"recipe": recipe.name, "hash": disk_image_hash(recipe.path),
                "os": recipe.os, "arch": recipe.arch, "release": recipe.release,
                "login": {"user": recipe.login_user, "password": recipe.login_password},
                **extra, "files": {KERNEL: _sha256(out / KERNEL)}}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def import_disk_image(recipe: DiskRecipe, disk: Path, kernel: Path, *,
                      check_kernel: Callable[[bytes], None] | None = None,
                      password: str | None = None, cache_dir: Path | None = None,
                      progress: Callable[[str], None] = print,
                      modules: tuple[Path, ...] = ()) -> Image:
    """Put a disk installed elsewhere, and the kernel it boots, into the cache.

    The disk is converted to a standalone qcow2 (``qemu-img convert``, any
    format QEMU reads); *check_kernel* may refuse the kernel (an InfraError);
    *password* replaces the recipe's root password; *modules* (FreeBSD's
    ``vmm.ko``) are kept beside the kernel under their names.  An image already
    cached under the same hash is replaced.
    """
    for what, path in (("disk", disk), ("kernel", kernel), *(("module", m) for m in modules)):
        if not path.is_file():
            raise InfraError(f"import {recipe.name}: no {what} file {path}")
    if check_kernel is not None:
        check_kernel(kernel.read_bytes())
    login = recipe if password is None else DiskRecipe(
        **{**recipe.__dict__, "login_password": password})

    def make(out: Path) -> dict[str, Any]:
        progress(f"import {recipe.name}: converting {disk} to qcow2")
        _convert(disk, out / DISK)
        shutil.copyfile(kernel, out / KERNEL)
        for module in modules:
            shutil.copyfile(module, out / module.name)
        return {"imported": {"disk": str(disk), "kernel": str(kernel),
                             "modules": [str(m) for m in modules]},
                "modules": {m.name: _sha256(out / m.name) for m in modules}}

    final = disk_image_dir(recipe, cache_dir)
    final.parent.mkdir(parents=True, exist_ok=True)
    with _locked(final.parent / f"{final.name}.lock"):
        with tempfile.TemporaryDirectory(prefix=f".{final.name}.", dir=final.parent) as tmp:
            out = Path(tmp) / "out"
            out.mkdir()
            _finish(login, out, make(out))
            if final.exists():
                shutil.rmtree(final)
            os.rename(out, final)
    progress(f"image {recipe.name}: imported into {final}")
    return disk_image_of(recipe, final)


def _convert(src: Path, dst: Path) -> None:
    """``qemu-img convert -O qcow2`` (the source format probed)."""
    cmd = ["qemu-img", "convert", "-O", "qcow2", str(src), str(dst)]
    try:
        subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=3600)
    except FileNotFoundError as exc:
        raise InfraError("qemu-img is not installed (apt-get install qemu-utils)") from exc
    except subprocess.CalledProcessError as exc:
        raise InfraError(f"qemu-img convert of {src} failed: {exc.stderr.strip()}") from exc
