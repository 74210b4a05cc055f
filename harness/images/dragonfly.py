"""The DragonFly BSD x86_64 L1 image as data and pure functions: release, files, checks,
loader dialogue, first boot.

Nothing here launches QEMU; :mod:`harness.images.dragonfly_builder` does.  The image
is the release's live disk image (``dfly-x86_64-<release>_REL.img.bz2``: a whole
bootable system, root without a password [read, third-party CI scripts]), so
nothing is installed: it is downloaded, checked, decompressed and customised at its
first boot.

* the pinned release (the recipe's ``release``), the mirror (the recipe's ``mirror``,
  ``$SLATCHECK_DRAGONFLY_MIRROR`` over it): ``<mirror>/dfly-x86_64-<release>_REL.img.bz2``
  and the mirror's ``md5.txt`` [inferred: BSD ``MD5 (name) = hex`` lines, or
  ``md5sum``'s ``hex  name``];
* integrity: DragonFly publishes MD5 only, so the recipe pins the image's SHA-256
  (``sha256``) and the build refuses any other file; the published MD5 is checked as
  well when ``md5.txt`` lists the file.  A recipe without a pin is built only when
  ``md5.txt`` vouches for the file, and the build prints the SHA-256 to pin;
* the loader's dialogue on the first boot (:data:`LOADER_MENU`, :data:`LOADER_OK`,
  :func:`loader_commands`): QEMU runs with ``-machine graphics=off`` so that SeaBIOS
  copies the BIOS console to the serial port; the loader menu is left with ESC, the
  console set to ``comconsole`` and the kernel booted single-user (``boot -s``), whose
  ``init`` asks for a shell [inferred: the FreeBSD-derived loader and init];
* the first-boot commands (:func:`firstboot_commands`): make root writable, unpack
  the workload from the raw-tar transfer disk (the second virtio disk,
  ``/dev/vbd1`` [inferred: virtio_blk's name]), build it with the guest's ``cc`` (the
  live image has no ``/usr/include`` [read]: the workload includes no system header),
  install a user-built kernel if one was given, put a getty on ``ttyd0`` and the
  loader's console on ``comconsole`` so that every later boot logs in over the serial
  console, and write the booted kernel back to the transfer disk.

The vkernel needs ``MAP_VPAGETABLE``, which DragonFly removed (commit 4d4f84f5f2, before
6.0 [inferred]); bug #3389 restores it.  A kernel built with that patch is named by
``$SLATCHECK_DRAGONFLY_KERNEL`` (its ``kernel.debug``, whose DWARF gives the kernel's
types) for the recipe that asks for it (``user_kernel: required``).

>>> image_file("6.4.2")
'dfly-x86_64-6.4.2_REL.img.bz2'
>>> parse_md5_list("MD5 (a.img.bz2) = " + "ab" * 16)["a.img.bz2"][:4]
'abab'
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from harness.images.signify import VerifyError

__all__ = ["ARCH", "DEFAULT_MIRROR", "MIRROR_ENV", "CHECKSUM_FILE", "KERNEL_ENV",
           "image_file", "image_url", "mirror_of", "parse_md5_list", "published_md5",
           "check_digests", "user_kernel_of", "LOADER_MENU", "LOADER_OK", "SINGLE_USER",
           "loader_commands", "WORKLOAD_SOURCES", "WORKLOAD_FILES", "WORKLOAD_BINARY",
           "TRANSFER_DEV", "GUEST_KERNEL", "KERNEL_OUT", "USER_KERNEL_IN",
           "firstboot_commands", "QEMU_EXTRA", "TYPE_ROOTS", "OPTIONAL_TYPE_ROOTS",
           "PROC_SYMBOLS"]

ARCH = "x86_64"
DEFAULT_MIRROR = "https://mirror-master.dragonflybsd.org/iso-images"
MIRROR_ENV = "SLATCHECK_DRAGONFLY_MIRROR"
KERNEL_ENV = "SLATCHECK_DRAGONFLY_KERNEL"     # a kernel.debug built with MAP_VPAGETABLE
CHECKSUM_FILE = "md5.txt"                     # [inferred] the mirror's MD5 list
TRANSFER_DEV = "/dev/vbd1"                    # [inferred] the second virtio-blk disk
WORKLOAD_DIR = "/root/slat-workload"
WORKLOAD_BINARY = "/usr/local/bin/slat-workload"
# images/workload/ files the guest compiles: the vkernel workload and its VPTE builder
WORKLOAD_SOURCES = ("vkernel_dfly.c", "vkernel_tables.c")
WORKLOAD_FILES = (*WORKLOAD_SOURCES, "vkernel.h")
GUEST_KERNEL = "/boot/kernel/kernel"          # what the loader boots
KERNEL_OUT = "kernel"                         # its name in the transfer disk's tar
USER_KERNEL_IN = "user-kernel"                # a user-built kernel going in
QEMU_EXTRA = ("-machine", "graphics=off")     # SeaBIOS's serial console (sercon)
# the loader: its menu or autoboot countdown [inferred: dloader's menu and the
# FreeBSD-derived countdown], its prompt, and init's single-user question
LOADER_MENU = re.compile(r"Escape to loader prompt|Hit \[Enter\] to boot|"
                         r"Booting in \d+ second|autoboot", re.I)
LOADER_OK = re.compile(r"(?m)^OK ")
SINGLE_USER = re.compile(r"Enter full pathname of shell or RETURN for /bin/sh")
# the L1 kernel's process table: the hash of process lists (kern_proc.c, 5.x+:
# ``allprocs[ALLPROC_HSIZE]``; some versions group it into ``procglob[]``)
PROC_SYMBOLS = ("allprocs", "procglob")
# the types discovery reads, kept as a DWARF subset beside the image
TYPE_ROOTS = ("struct proc", "struct proclist", "struct vmspace", "struct vm_map",
              "struct vm_map_entry", "struct vm_object", "struct vm_page", "struct pmap",
              "struct vkernel_proc", "struct vmspace_entry")
OPTIONAL_TYPE_ROOTS = ("struct procglob",)     # where the process lists are grouped
_MD5_BSD = re.compile(r"MD5 \((?P<name>[^)]+)\) = (?P<hex>[0-9a-fA-F]{32})")
_MD5_GNU = re.compile(r"(?P<hex>[0-9a-fA-F]{32}) [ *](?P<name>\S+)")


def image_file(release: str, arch: str = ARCH) -> str:
    """The live disk image's file name for *release* (``"6.4.2"``)."""
    return f"dfly-{arch}-{release}_REL.img.bz2"


def image_url(name: str, mirror: str = DEFAULT_MIRROR) -> str:
    """A file of the mirror's ``iso-images`` directory."""
    return f"{mirror.rstrip('/')}/{name}"


def mirror_of(recipe_data: Mapping[str, Any]) -> str:
    """``$SLATCHECK_DRAGONFLY_MIRROR``, else the recipe's ``mirror``, else the master mirror."""
    return os.environ.get(MIRROR_ENV) or str(recipe_data.get("mirror") or DEFAULT_MIRROR)


def parse_md5_list(text: str) -> dict[str, str]:
    """``name -> md5`` from BSD (``MD5 (name) = hex``) or md5sum lines; others ignored
    (the mirror's list may carry comments)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        m = _MD5_BSD.fullmatch(line.strip()) or _MD5_GNU.fullmatch(line.strip())
        if m is None:
            continue
        name, digest = m.group("name"), m.group("hex").lower()
        if out.get(name, digest) != digest:
            raise VerifyError(f"{CHECKSUM_FILE} lists {name} twice with different MD5s")
        out[name] = digest
    return out


def published_md5(checksums: str | None, name: str) -> str | None:
    """The MD5 the mirror publishes for *name*, None when it publishes none."""
    return None if checksums is None else parse_md5_list(checksums).get(name)


def check_digests(name: str, sha256: str, md5: str, *, pinned: str | None,
                  published: str | None) -> list[str]:
    """Refuse a file whose SHA-256 is not the pinned one, or whose MD5 is not the
    published one; with neither a pin nor a published MD5 nothing vouches for it.

    What was checked, for the manifest and the log.

    >>> check_digests("f", "aa" * 32, "bb" * 16, pinned="aa" * 32, published=None)
    ['sha256 pinned in the recipe']
    """
    if pinned is None and published is None:
        raise VerifyError(f"{name}: the recipe pins no SHA-256 and {CHECKSUM_FILE} lists no "
                          f"MD5 for it, so nothing vouches for the file (SHA-256 {sha256}); "
                          "pin it in the recipe's sha256 if you trust it")
    checked = []
    if pinned is not None:
        if pinned.lower() != sha256:
            raise VerifyError(f"{name}: SHA-256 {sha256}, but the recipe pins "
                              f"{pinned.lower()}: the file on the mirror changed")
        checked.append("sha256 pinned in the recipe")
    if published is not None:
        if published != md5:
            raise VerifyError(f"{name}: MD5 {md5}, but {CHECKSUM_FILE} lists {published}")
        checked.append(f"md5 listed in {CHECKSUM_FILE}")
    return checked


def user_kernel_of(recipe_data: Mapping[str, Any]) -> Path | None:
    """The user's kernel (``$SLATCHECK_DRAGONFLY_KERNEL``, else the recipe's ``kernel``)."""
    path = os.environ.get(KERNEL_ENV) or recipe_data.get("kernel")
    return Path(str(path)).expanduser() if path else None


def loader_commands() -> list[str]:
    """Typed at the loader's ``OK`` prompt on the first boot: serial console, single-user."""
    return ["set console=comconsole", "boot -s"]


def firstboot_commands(user_kernel: bool = False, cc_flags: str = "-O2 -Wall",
                       sources: tuple[str, ...] = WORKLOAD_SOURCES) -> list[str]:
    """Shell commands run as root in the first boot's single-user shell, in order.

    Make root writable, unpack the transfer disk, build the workload with the
    guest's cc, install the user's kernel (*user_kernel*), enable the serial getty
    and the loader's serial console for later boots, and write the booted kernel
    back to the transfer disk.
    """
    d = WORKLOAD_DIR
    out = [
        "mount -u -w /",
        f"mkdir -p {d} /usr/local/bin && tar -xf {TRANSFER_DEV} -C {d}",
        f"cd {d} && cc {cc_flags} -o {WORKLOAD_BINARY} " + " ".join(sources),
    ]
    if user_kernel:
        out.append(f"mv {GUEST_KERNEL} {GUEST_KERNEL}.stock && "
                   f"cp {d}/{USER_KERNEL_IN} {GUEST_KERNEL}")
    out += [
        # a getty on the first serial port (std.9600: the loader's comconsole speed)
        "sed -i '' -e 's|^ttyd0[[:space:]].*|ttyd0 \"/usr/libexec/getty std.9600\" "
        "vt100 on secure|' /etc/ttys && grep '^ttyd0' /etc/ttys",
        "printf '%s\\n' 'console=\"comconsole\"' 'autoboot_delay=\"2\"' >> /boot/loader.conf",
        f"cp {GUEST_KERNEL} {d}/{KERNEL_OUT} && tar -cf {TRANSFER_DEV} -C {d} {KERNEL_OUT}",
        "sync",
    ]
    return out
