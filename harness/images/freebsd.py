"""The FreeBSD amd64 L1 image as data and pure functions: release, files, checks, first boot.

Nothing here launches QEMU; :mod:`harness.images.freebsd_builder` does.  The image is
the release's BASIC-CI raw disk (``release/tools/basic-ci.conf``: the loader and the
kernel on the serial console, root without a password, ``/firstboot``), so nothing is
installed: it is downloaded, checked, decompressed and customised at its first boot.

* the pinned release (the recipe's ``release``), the mirror (the recipe's ``mirror``,
  ``$SLATCHECK_FREEBSD_MIRROR`` over it) and the files:
  ``<mirror>/CI-IMAGES/<release>-RELEASE/<arch>/Latest/`` holds
  ``FreeBSD-<release>-RELEASE-<arch>-BASIC-CI.raw.xz`` and ``CHECKSUM.SHA256``
  (written by ``sha256 F* > CHECKSUM.SHA256``: ``SHA256 (<file>) = <hex>`` lines);
* the image's SHA-256 comes from that checksum file; a digest pinned in the recipe
  (``sha256``) must be the same one, so a changed file on the mirror is refused;
* the first-boot commands (:func:`firstboot_commands`): unpack the workload sources
  from the raw-tar transfer disk (the second virtio disk, ``/dev/vtbd1``), build them
  with the guest's ``cc`` against libvmmapi, try ``kldload vmm`` (recorded, not
  required: TCG has no NRIP save, so vmm.ko refuses to load there), and write the
  kernel and ``vmm.ko`` back to the transfer disk (their symbols and CTF).

>>> image_file("14.3")
'FreeBSD-14.3-RELEASE-amd64-BASIC-CI.raw.xz'
>>> image_dir_url("14.3", mirror="http://127.0.0.1:8000/releases/")
'http://127.0.0.1:8000/releases/CI-IMAGES/14.3-RELEASE/amd64/Latest'
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from harness.images.signify import VerifyError, parse_sha256_list

__all__ = ["ARCH", "DEFAULT_MIRROR", "MIRROR_ENV", "CHECKSUM_FILE", "image_file",
           "image_dir_url", "mirror_of", "expected_digest", "WORKLOAD_DIR",
           "WORKLOAD_SOURCES", "WORKLOAD_FILES", "TRANSFER_DEV", "KERNEL_OUT", "VMM_OUT",
           "GUEST_KERNEL", "GUEST_VMM", "firstboot_commands", "VMM_LOAD_COMMAND",
           "WORKLOAD_BINARY"]

ARCH = "amd64"
DEFAULT_MIRROR = "https://download.freebsd.org/releases"
MIRROR_ENV = "SLATCHECK_FREEBSD_MIRROR"
CHECKSUM_FILE = "CHECKSUM.SHA256"
TRANSFER_DEV = "/dev/vtbd1"            # the second virtio-blk disk, raw
WORKLOAD_DIR = "/root/slat-workload"
WORKLOAD_BINARY = "/usr/local/bin/slat-workload"
# images/workload/ files the guest compiles: the shared main.c and x86 guest code, and
# the bhyve backend (libvmmapi); workload.h is needed too
WORKLOAD_SOURCES = ("main.c", "common.c", "hv_freebsd.c", "l2_x86.c")
WORKLOAD_FILES = (*WORKLOAD_SOURCES, "workload.h")
GUEST_KERNEL = "/boot/kernel/kernel"   # the kernel the loader boots (symbols, CTF)
GUEST_VMM = "/boot/kernel/vmm.ko"      # bhyve's module (CTF of struct vm, vmmdev_softc...)
KERNEL_OUT = "kernel"                  # their names in the transfer disk's tar
VMM_OUT = "vmm.ko"
# kldload -n: no error when it is already loaded; the status and the kernel's words
# (dmesg) are what harness.bhyve_support decides from
VMM_LOAD_COMMAND = "kldload -n vmm; echo kldload-status $?; dmesg | tail -n 20"


def image_file(release: str, arch: str = ARCH) -> str:
    """The BASIC-CI image's file name for *release* (``"14.3"``)."""
    return f"FreeBSD-{release}-RELEASE-{arch}-BASIC-CI.raw.xz"


def image_dir_url(release: str, arch: str = ARCH, mirror: str = DEFAULT_MIRROR) -> str:
    """The ``Latest`` directory of the release's CI images on *mirror*."""
    return f"{mirror.rstrip('/')}/CI-IMAGES/{release}-RELEASE/{arch}/Latest"


def mirror_of(recipe_data: Mapping[str, Any]) -> str:
    """``$SLATCHECK_FREEBSD_MIRROR``, else the recipe's ``mirror``, else the FreeBSD CDN."""
    return os.environ.get(MIRROR_ENV) or str(recipe_data.get("mirror") or DEFAULT_MIRROR)


def expected_digest(checksums: str, name: str, pinned: str | None = None) -> str:
    """The SHA-256 of *name* that ``CHECKSUM.SHA256`` lists, which a *pinned* one must equal.

    >>> expected_digest("SHA256 (a.raw.xz) = " + "0f" * 32 + "\\n", "a.raw.xz")[:4]
    '0f0f'
    """
    try:
        listed = parse_sha256_list(checksums)
    except VerifyError as exc:
        raise VerifyError(f"{CHECKSUM_FILE}: {exc}") from exc
    if name not in listed:
        raise VerifyError(f"{CHECKSUM_FILE} does not list {name} (it lists "
                          f"{', '.join(sorted(listed)) or 'nothing'})")
    digest = listed[name]
    if pinned is not None and pinned.lower() != digest:
        raise VerifyError(f"{CHECKSUM_FILE} lists {name} with SHA-256 {digest}, but the "
                          f"recipe pins {pinned.lower()}: the file on the mirror changed")
    return digest


def firstboot_commands(cc_flags: str = "-O2 -Wall -pthread",
                       sources: tuple[str, ...] = WORKLOAD_SOURCES) -> list[str]:
    """Shell commands run as root on the image's first boot, in order.

    Unpack the workload sources from the transfer disk, build them with the
    guest's cc and libvmmapi, note the kernel's digest, and write the kernel
    and vmm.ko back to the transfer disk.  Loading vmm.ko is tried separately
    (:data:`VMM_LOAD_COMMAND`): it fails where the CPU lacks what bhyve needs.
    """
    d = WORKLOAD_DIR
    return [
        f"mkdir -p {d} /usr/local/bin && tar -xf {TRANSFER_DEV} -C {d}",
        f"cd {d} && cc {cc_flags} -DSLAT_FREEBSD -o {WORKLOAD_BINARY} "
        + " ".join(sources) + " -lvmmapi",
        f"sha256 -q {GUEST_KERNEL} {GUEST_VMM}",
        f"tar -cf {TRANSFER_DEV} -C /boot/kernel {KERNEL_OUT} {VMM_OUT}",
        "sync",
    ]
