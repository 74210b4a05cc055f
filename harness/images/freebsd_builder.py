"""The ``freebsd-basic-ci`` image builder: the release's BASIC-CI disk to a cached,
customised disk.

Steps (each a function below, the data they use in :mod:`harness.images.freebsd`):

1. :func:`fetch_image`: download ``CHECKSUM.SHA256`` and the ``.raw.xz`` image from
   the mirror (the recipe's ``mirror``, ``$SLATCHECK_FREEBSD_MIRROR`` over it) into
   ``<cache>/slatcheck/freebsd/<release>/<arch>/`` (progress, resume), and check the
   image's SHA-256 against the checksum file and the recipe's pin; a file that fails
   is deleted and the build fails.  With nothing cached and the mirror unreachable
   (no network) the build ends in :class:`~harness.errors.SkipScenario`.
2. :func:`make_disk`: decompress to a sparse raw file (:mod:`harness.images.unpack`),
   convert it to qcow2 and grow it to the recipe's ``disk_size``.
3. :func:`first_boot`: boot it once with a raw transfer disk holding the workload's
   sources, log in as root on the serial getty, build the workload with the guest's
   ``cc`` and libvmmapi, try to load vmm.ko (the result is recorded in the manifest),
   and copy ``/boot/kernel/kernel`` and ``vmm.ko`` out.
4. The disk, the kernel and vmm.ko are cached (:mod:`harness.images.disk_image`);
   each run boots an overlay of the disk.

>>> release_dir("14.3", Path("/c")).as_posix()
'/c/slatcheck/freebsd/14.3/amd64'
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import InfraError, SkipScenario
from harness.images import freebsd as fb
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

__all__ = ["build_freebsd_image", "fetch_image", "make_disk", "first_boot", "check_kernel",
           "release_dir", "FirstBoot", "VMM_MODULE", "LOGIN_TIMEOUT"]

Progress = Callable[[str], None]
MachineMaker = Callable[..., Any]     # firstboot_machine's signature
VMM_MODULE = "vmm.ko"           # kept beside the image's kernel: its CTF has struct vm
LOGIN_TIMEOUT = 1800.0          # the first boot runs /firstboot scripts under TCG
TRANSFER_SIZE = 128 << 20


def release_dir(release: str, cache_dir: Path | None = None) -> Path:
    """Where a release's checked files are kept."""
    return cache_root(cache_dir).parent / "freebsd" / release / fb.ARCH


def _pin(recipe: DiskRecipe) -> str | None:
    pin = recipe.data.get("sha256")
    return str(pin) if pin else None


def fetch_image(recipe: DiskRecipe, dest: Path, progress: Progress) -> dict[str, str]:
    """Fetch the checksum file and the image into *dest* and check the image; name ->
    SHA-256.  A failing image is deleted (the next build fetches it again)."""
    base = fb.image_dir_url(recipe.release, mirror=fb.mirror_of(recipe.data))
    name = fb.image_file(recipe.release)
    files = {}
    for wanted in (fb.CHECKSUM_FILE, name):
        try:
            files[wanted] = fetch(f"{base}/{wanted}", dest, progress=progress).path
        except FetchError as exc:
            raise InfraError(f"FreeBSD {recipe.release}: {exc}") from exc
    try:
        want = fb.expected_digest(files[fb.CHECKSUM_FILE].read_text(), name, _pin(recipe))
    except VerifyError:
        files[fb.CHECKSUM_FILE].unlink(missing_ok=True)
        raise
    got = sha256_file(files[name])
    if got != want:
        files[name].unlink(missing_ok=True)
        raise VerifyError(f"{name}: SHA-256 {got} differs from {want} in {fb.CHECKSUM_FILE}; "
                          "the file was deleted")
    progress(f"FreeBSD {recipe.release}: {name} has the SHA-256 {fb.CHECKSUM_FILE} lists")
    return {name: got, fb.CHECKSUM_FILE: sha256_file(files[fb.CHECKSUM_FILE])}


def make_disk(xz: Path, disk: Path, size: int, work: Path, progress: Progress) -> None:
    """The image as a qcow2 of *size* bytes (decompressed sparsely, converted, grown)."""
    raw = work / "base.raw"
    decompress(xz, raw, progress)
    for cmd in (["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", str(raw), str(disk)],
                ["qemu-img", "resize", "-q", "-f", "qcow2", str(disk), str(size)]):
        try:
            subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=3600)
        except FileNotFoundError as exc:
            raise InfraError("qemu-img is not installed (apt-get install qemu-utils)") from exc
        except subprocess.CalledProcessError as exc:
            raise InfraError(f"{' '.join(cmd[:2])} failed: {exc.stderr.strip()}") from exc
    raw.unlink()


@dataclass(frozen=True)
class FirstBoot:
    """What the first boot produced: the kernel, vmm.ko and notes for the manifest."""

    kernel: bytes
    vmm: bytes
    notes: dict[str, Any] = field(default_factory=dict)


def first_boot(recipe: DiskRecipe, disk: Path, logs: Path, progress: Progress,
               machine: MachineMaker = firstboot_machine) -> FirstBoot:
    """Boot the disk once to customise it; the kernel and vmm.ko it wrote out.

    *machine* makes the machine (:func:`~harness.images.firstboot.firstboot_machine`;
    tests give a scripted guest).
    """
    from harness.bhyve_support import IDENTCPU_GREP
    from harness.console import Console
    from harness.freebsd_console import CONSOLE, LOGIN
    from harness.serial_login import serial_login
    sources = {n: (WORKLOAD_DIR / n).read_bytes() for n in fb.WORKLOAD_FILES}
    transfer = logs / "transfer.raw"
    transfer.write_bytes(pack_transfer_disk(sources, TRANSFER_SIZE))
    with machine(recipe.arch, recipe.cpu, recipe.memory, disk, logs, "fbsd-firstboot",
                 transfer=transfer) as m, \
            Console.connect(m.console, log_path=logs / "firstboot-console.log",
                            profile=CONSOLE) as con:
        serial_login(con, recipe.login_user, recipe.login_password, LOGIN_TIMEOUT,
                     prompt=LOGIN)
        commands = fb.firstboot_commands()
        outputs = run_commands(con, commands, "first boot", progress)
        identcpu = con.run(IDENTCPU_GREP, timeout=60, check=False).output
        vmm = con.run(fb.VMM_LOAD_COMMAND, timeout=300, check=False).output
        con.send_line("shutdown -p now")
        wait_exit(m, 600, "first boot")
    files = unpack_transfer_disk(transfer.read_bytes())
    missing = [n for n in (fb.KERNEL_OUT, fb.VMM_OUT) if n not in files]
    if missing:
        raise InfraError(f"first boot wrote no {', '.join(missing)} to the transfer disk "
                         f"(it holds {sorted(files)})")
    transfer.unlink()
    return FirstBoot(files[fb.KERNEL_OUT], files[fb.VMM_OUT],
                     {"identcpu": identcpu, "vmm_load": vmm,
                      "commands": dict(zip(commands, outputs, strict=True))})


def check_kernel(kernel: bytes) -> None:
    """Refuse a kernel without the symbols or CTF types discovery and backing need."""
    from harness.ctf import Ctf, ctf_section
    from harness.discovery.freebsd_bhyve import NEEDED_SYMBOLS
    from harness.discovery.freebsd_proc import PROC_SYMBOLS
    from harness.elf_symbols import elf_symbols
    elf_symbols(kernel, [*NEEDED_SYMBOLS, *PROC_SYMBOLS])
    types = Ctf.load(ctf_section(kernel), flavour="freebsd")
    for spec, member in (("struct cdev_priv", "cdp_c"), ("struct pmap", "pm_type"),
                         ("struct proc", "p_vmspace"), ("struct vmspace", "vm_pmap")):
        types.offsetof(spec, member)


def _make(recipe: DiskRecipe, cache_dir: Path | None, progress: Progress,
          machine: MachineMaker) -> Callable[[Path], dict[str, Any]]:
    def make(out: Path) -> dict[str, Any]:
        files = release_dir(recipe.release, cache_dir)
        digests = fetch_image(recipe, files, progress)
        logs = out / "logs"
        logs.mkdir()
        progress(f"FreeBSD {recipe.release}: preparing the disk")
        make_disk(files / fb.image_file(recipe.release), out / DISK, recipe.disk_size, logs,
                  progress)
        progress(f"FreeBSD {recipe.release}: first boot (workload, vmm.ko, kernel)")
        boot = first_boot(recipe, out / DISK, logs, progress, machine)
        check_kernel(boot.kernel)
        (out / KERNEL).write_bytes(boot.kernel)
        (out / VMM_MODULE).write_bytes(boot.vmm)
        return {"release_files": digests, "mirror": fb.mirror_of(recipe.data),
                "cpu": recipe.cpu, "workload": list(fb.WORKLOAD_FILES),
                "modules": {VMM_MODULE: sha256_file(out / VMM_MODULE)},
                "firstboot": boot.notes}
    return make


def build_freebsd_image(name: str, progress: Progress = print, cache_dir: Path | None = None,
                        *, machine: MachineMaker = firstboot_machine) -> Image:
    """The cached FreeBSD image *name*, or build it (SkipScenario when it cannot be here).

    *machine* makes the first boot's machine (tests give a scripted guest).
    """
    recipe = load_disk_recipe(name)
    image = cached_disk_image(recipe, cache_dir)
    if image is not None:
        progress(f"image {name}: cached in {image.dir}")
        return image
    progress(f"image {name}: not in the cache ({disk_image_dir(recipe, cache_dir)})")
    xz = release_dir(recipe.release, cache_dir) / fb.image_file(recipe.release)
    if not xz.is_file():
        url = f"{fb.image_dir_url(recipe.release, mirror=fb.mirror_of(recipe.data))}/" \
              f"{fb.CHECKSUM_FILE}"
        why = mirror_unreachable(url)
        if why is not None:
            raise SkipScenario(
                f"the FreeBSD {recipe.release} image is not in the cache and {why}; build it "
                f"where the mirror is reachable (`slatcheck images build {name}`) or import a "
                f"disk made elsewhere (`slatcheck images import {name} --disk FILE --kernel "
                f"KERNEL --module vmm.ko`)")
    return install_disk_image(recipe, _make(recipe, cache_dir, progress, machine), cache_dir,
                              progress)
