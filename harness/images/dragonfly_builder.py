"""The ``dragonfly-live`` image builder: the release's live disk image to a cached,
customised disk, optionally booting a user-built kernel.

Steps (each a function below, the data they use in :mod:`harness.images.dragonfly`):

1. :func:`fetch_image`: download the mirror's ``md5.txt`` (when it has one) and the
   ``.img.bz2`` into ``<cache>/slatcheck/dragonfly/<release>/x86_64/`` (progress,
   resume), and check the image's SHA-256 against the recipe's pin and its MD5
   against the published one (:func:`~harness.images.dragonfly.check_digests`); a
   file that fails is deleted and the build fails.  With nothing cached and the
   mirror unreachable the build ends in :class:`~harness.errors.SkipScenario`.
2. :func:`make_disk`: decompress to a sparse raw file, convert it to qcow2.
3. :func:`user_kernel`: when the recipe asks for one (``user_kernel: required``), the
   user's ``kernel.debug`` (``$SLATCHECK_DRAGONFLY_KERNEL``): its symbols and DWARF
   types are checked and kept (``types.json``), and a copy without debug sections
   goes into the guest.  Without it the build ends in SkipScenario: stock DragonFly
   has no ``MAP_VPAGETABLE``, so the vkernel scenarios cannot run.
4. :func:`first_boot`: boot once with ``-machine graphics=off`` (SeaBIOS's serial
   console) and a raw transfer disk, leave the loader's menu for its prompt, boot
   single-user on the serial console, run the first-boot commands (build the
   workload with the guest's cc, install the kernel, serial getty and loader
   console for later boots), copy the booted kernel out, power off.
5. The disk, the kernel and the types are cached (:mod:`harness.images.disk_image`);
   each run boots an overlay of the disk and logs in on the getty.

>>> release_dir("6.4.2", Path("/c")).as_posix()
'/c/slatcheck/dragonfly/6.4.2/x86_64'
"""

from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import InfraError, SkipScenario
from harness.images import dragonfly as df
from harness.images.build import Image, cache_root
from harness.images.disk_image import (
    DISK,
    KERNEL,
    DiskRecipe,
    cached_disk_image,
    disk_image_dir,
    install_disk_image,
    load_disk_recipe,
)
from harness.images.fetch import FetchError, fetch
from harness.images.firstboot import (
    firstboot_machine,
    mirror_unreachable,
    run_commands,
    wait_exit,
)
from harness.images.openbsd import pack_transfer_disk, unpack_transfer_disk
from harness.images.recipe import WORKLOAD_DIR
from harness.images.signify import VerifyError, sha256_file
from harness.images.unpack import decompress

__all__ = ["build_dragonfly_image", "fetch_image", "make_disk", "user_kernel", "first_boot",
           "check_kernel", "release_dir", "UserKernel", "FirstBoot", "TYPES_FILE",
           "BOOT_TIMEOUT"]

Progress = Callable[[str], None]
MachineMaker = Callable[..., Any]     # firstboot_machine's signature
TYPES_FILE = "types.json"            # the kernel's DWARF subset, beside the image's kernel
BOOT_TIMEOUT = 1800.0                # loader, kernel and init under TCG
TRANSFER_SIZE = 256 << 20            # the workload in; a kernel (tens of MiB) each way
REQUIRED = "required"


def release_dir(release: str, cache_dir: Path | None = None) -> Path:
    """Where a release's checked files are kept."""
    return cache_root(cache_dir).parent / "dragonfly" / release / df.ARCH


def _pin(recipe: DiskRecipe) -> str | None:
    pin = recipe.data.get("sha256")
    return str(pin) if pin else None


def _md5(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fetch_image(recipe: DiskRecipe, dest: Path, progress: Progress) -> dict[str, Any]:
    """Fetch and check the image into *dest*; what was checked, for the manifest.

    ``md5.txt`` is optional (its name is [inferred]); the image is refused unless
    the recipe's pin or the published MD5 vouches for it.  A failing image is
    deleted (the next build fetches it again).
    """
    mirror = df.mirror_of(recipe.data)
    name = df.image_file(recipe.release)
    try:
        sums: str | None = fetch(df.image_url(df.CHECKSUM_FILE, mirror), dest,
                                 progress=progress).path.read_text(errors="replace")
    except FetchError as exc:
        progress(f"DragonFly {recipe.release}: no {df.CHECKSUM_FILE} ({exc}); relying on "
                 "the recipe's pin")
        sums = None
    try:
        path = fetch(df.image_url(name, mirror), dest, progress=progress).path
    except FetchError as exc:
        raise InfraError(f"DragonFly {recipe.release}: {exc}") from exc
    sha256, md5 = sha256_file(path), _md5(path)
    try:
        checked = df.check_digests(name, sha256, md5, pinned=_pin(recipe),
                                   published=df.published_md5(sums, name))
    except VerifyError:
        path.unlink(missing_ok=True)
        raise
    progress(f"DragonFly {recipe.release}: {name} checked ({'; '.join(checked)})")
    if _pin(recipe) is None:
        progress(f"DragonFly {recipe.release}: pin it in {recipe.path}: sha256: {sha256}")
    return {"file": name, "sha256": sha256, "md5": md5, "checked": checked}


def make_disk(bz2: Path, disk: Path, size: int, work: Path, progress: Progress) -> None:
    """The image as a qcow2 of at least *size* bytes (decompressed sparsely, converted)."""
    raw = work / "base.raw"
    written = decompress(bz2, raw, progress)
    cmds = [["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", str(raw), str(disk)]]
    if size > written:
        cmds.append(["qemu-img", "resize", "-q", "-f", "qcow2", str(disk), str(size)])
    for cmd in cmds:
        try:
            subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=3600)
        except FileNotFoundError as exc:
            raise InfraError("qemu-img is not installed (apt-get install qemu-utils)") from exc
        except subprocess.CalledProcessError as exc:
            raise InfraError(f"{' '.join(cmd[:2])} failed: {exc.stderr.strip()}") from exc
    raw.unlink()


@dataclass(frozen=True)
class UserKernel:
    """A user-built kernel: the file given, what goes into the guest, its types."""

    path: Path
    sha256: str            # of the file given (kernel.debug)
    stripped: bytes        # without debug sections: what the guest boots
    types_json: str        # the DWARF subset discovery reads


def check_kernel(kernel: bytes) -> None:
    """Refuse a kernel without a process table symbol (an ELF ``.symtab`` is needed)."""
    from harness.elf_symbols import SymbolError, elf_symbols
    for name in df.PROC_SYMBOLS:
        try:
            elf_symbols(kernel, [name])
            return
        except SymbolError as exc:
            last = exc
    raise InfraError(f"the DragonFly kernel has none of {', '.join(df.PROC_SYMBOLS)}: {last}")


def kernel_types(kernel: bytes) -> str:
    """The DWARF subset of *kernel* discovery needs, as JSON; InfraError without DWARF
    or without the vkernel's structures."""
    from harness.ctf import CtfError
    from harness.dwarf import Dwarf, dwarf_subset, subset_to_json
    try:
        types = Dwarf.load_elf(kernel)
        optional = [r for r in df.OPTIONAL_TYPE_ROOTS if _has_type(types, r)]
        return subset_to_json(dwarf_subset(types, [*df.TYPE_ROOTS, *optional]))
    except CtfError as exc:
        raise InfraError(f"the kernel's DWARF lacks what vkernel discovery reads ({exc}): "
                         "give the build's kernel.debug, built with the vkernel "
                         "(MAP_VPAGETABLE) support") from exc


def _has_type(types: Any, spec: str) -> bool:
    from harness.ctf import CtfError
    try:
        types.find(spec)
    except CtfError:
        return False
    return True


def _strip(src: Path, work: Path) -> bytes:
    out = work / "kernel.stripped"
    try:
        subprocess.run(["objcopy", "--strip-debug", str(src), str(out)], check=True,
                       capture_output=True, text=True, timeout=600)
    except FileNotFoundError as exc:
        raise InfraError("objcopy is not installed (apt-get install binutils)") from exc
    except subprocess.CalledProcessError as exc:
        raise InfraError(f"objcopy --strip-debug {src} failed: {exc.stderr.strip()}") from exc
    data = out.read_bytes()
    out.unlink()
    return data


def user_kernel(path: Path, work: Path) -> UserKernel:
    """Check and prepare the user's ``kernel.debug``."""
    if not path.is_file():
        raise InfraError(f"{df.KERNEL_ENV}={path}: no such file")
    data = path.read_bytes()
    check_kernel(data)
    return UserKernel(path, sha256_file(path), _strip(path, work), kernel_types(data))


def _wants_user_kernel(recipe: DiskRecipe) -> bool:
    return str(recipe.data.get("user_kernel", "")).lower() == REQUIRED


@dataclass(frozen=True)
class FirstBoot:
    """What the first boot produced: the booted kernel and notes for the manifest."""

    kernel: bytes
    notes: dict[str, Any] = field(default_factory=dict)


def loader_dialogue(console: Any, timeout: float) -> None:
    """From the loader's menu to the single-user shell (serial console, ``boot -s``)."""
    console.expect(df.LOADER_MENU, timeout=timeout)
    console.send_line("\x1b")                 # ESC: the loader's prompt (the newline
    console.expect(df.LOADER_OK, timeout=60)  # that follows only prints another OK)
    commands = df.loader_commands()
    for i, cmd in enumerate(commands):
        console.send_line(cmd)
        if i < len(commands) - 1:
            console.expect(df.LOADER_OK, timeout=60)
    console.expect(df.SINGLE_USER, timeout=timeout)
    console.send_line("")
    console.wait_for_shell(timeout=120)


def first_boot(recipe: DiskRecipe, disk: Path, logs: Path, progress: Progress,
               kernel: UserKernel | None = None,
               machine: MachineMaker = firstboot_machine) -> FirstBoot:
    """Boot the disk once to customise it; the kernel it boots from now on.

    *machine* makes the machine (:func:`~harness.images.firstboot.firstboot_machine`;
    tests give a scripted guest).
    """
    from harness.console import Console
    from harness.dragonfly_console import CONSOLE
    files = {n: (WORKLOAD_DIR / n).read_bytes() for n in df.WORKLOAD_FILES}
    if kernel is not None:
        files[df.USER_KERNEL_IN] = kernel.stripped
    transfer = logs / "transfer.raw"
    transfer.write_bytes(pack_transfer_disk(files, TRANSFER_SIZE))
    with machine(recipe.arch, recipe.cpu, recipe.memory, disk, logs, "dfly-firstboot",
                 transfer=transfer, extra=df.QEMU_EXTRA) as m, \
            Console.connect(m.console, log_path=logs / "firstboot-console.log",
                            profile=CONSOLE) as con:
        loader_dialogue(con, BOOT_TIMEOUT)
        commands = df.firstboot_commands(user_kernel=kernel is not None)
        outputs = run_commands(con, commands, "first boot", progress)
        con.send_line("poweroff")
        wait_exit(m, 600, "first boot")
    out = unpack_transfer_disk(transfer.read_bytes())
    if df.KERNEL_OUT not in out:
        raise InfraError(f"first boot wrote no {df.KERNEL_OUT} to the transfer disk "
                         f"(it holds {sorted(out)})")
    transfer.unlink()
    if kernel is not None and out[df.KERNEL_OUT] != kernel.stripped:
        raise InfraError("the guest's /boot/kernel/kernel is not the user's kernel after "
                         "the first boot installed it")
    return FirstBoot(out[df.KERNEL_OUT],
                     {"commands": dict(zip(commands, outputs, strict=True))})


def _make(recipe: DiskRecipe, cache_dir: Path | None, progress: Progress,
          kernel_path: Path | None, machine: MachineMaker) -> Callable[[Path], dict[str, Any]]:
    def make(out: Path) -> dict[str, Any]:
        logs = out / "logs"
        logs.mkdir()
        kernel = None if kernel_path is None else user_kernel(kernel_path, logs)
        files = release_dir(recipe.release, cache_dir)
        checked = fetch_image(recipe, files, progress)
        progress(f"DragonFly {recipe.release}: preparing the disk")
        make_disk(files / df.image_file(recipe.release), out / DISK, recipe.disk_size, logs,
                  progress)
        progress(f"DragonFly {recipe.release}: first boot (workload, serial console"
                 f"{', user kernel' if kernel else ''})")
        boot = first_boot(recipe, out / DISK, logs, progress, kernel, machine)
        check_kernel(boot.kernel)
        (out / KERNEL).write_bytes(boot.kernel)
        extra: dict[str, Any] = {"release_files": checked, "mirror": df.mirror_of(recipe.data),
                                 "cpu": recipe.cpu, "workload": list(df.WORKLOAD_FILES),
                                 "firstboot": boot.notes}
        if kernel is not None:
            (out / TYPES_FILE).write_text(kernel.types_json)
            extra["user_kernel"] = {"path": str(kernel.path), "sha256": kernel.sha256}
        return extra
    return make


def _check_cached(image: Image, kernel_path: Path | None) -> None:
    """A cached image built (or imported) with another user kernel than the one named
    now is refused; with none named, the cached image's own kernel is used."""
    if kernel_path is None:
        return
    man = image.manifest
    built = man.get("user_kernel", {}).get("sha256") if "user_kernel" in man else \
        man.get("files", {}).get("kernel")
    now = sha256_file(kernel_path) if kernel_path.is_file() else "missing"
    if built != now:
        raise InfraError(f"image {image.name} in {image.dir} was built with the kernel "
                         f"{built}, but {df.KERNEL_ENV} names {kernel_path} ({now}): remove "
                         f"{image.dir} to rebuild it with this kernel")


def build_dragonfly_image(name: str, progress: Progress = print,
                          cache_dir: Path | None = None, *,
                          machine: MachineMaker = firstboot_machine) -> Image:
    """The cached DragonFly image *name*, or build it (SkipScenario when it cannot be here).

    *machine* makes the first boot's machine (tests give a scripted guest).
    """
    recipe = load_disk_recipe(name)
    kernel_path = df.user_kernel_of(recipe.data) if _wants_user_kernel(recipe) else None
    image = cached_disk_image(recipe, cache_dir)
    if image is not None:
        _check_cached(image, kernel_path)
        progress(f"image {name}: cached in {image.dir}")
        return image
    if _wants_user_kernel(recipe) and kernel_path is None:
        raise SkipScenario(
            f"image {name} boots a DragonFly kernel with MAP_VPAGETABLE, which stock "
            f"DragonFly removed: build one with the vkernel patch (DragonFly bug #3389) and "
            f"name its kernel.debug in ${df.KERNEL_ENV}")
    progress(f"image {name}: not in the cache ({disk_image_dir(recipe, cache_dir)})")
    bz2 = release_dir(recipe.release, cache_dir) / df.image_file(recipe.release)
    if not bz2.is_file():
        url = df.image_url(df.image_file(recipe.release), df.mirror_of(recipe.data))
        why = mirror_unreachable(url)
        if why is not None:
            raise SkipScenario(
                f"the DragonFly {recipe.release} image is not in the cache and {why}; build "
                f"it where the mirror is reachable (`slatcheck images build {name}`) or "
                f"import a disk made elsewhere (`slatcheck images import {name} --disk FILE "
                f"--kernel KERNEL`)")
    image = install_disk_image(recipe, _make(recipe, cache_dir, progress, kernel_path, machine),
                               cache_dir, progress)
    _check_cached(image, kernel_path)
    return image
