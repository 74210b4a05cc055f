"""The OpenBSD amd64 L1 image as data and pure functions: release, files, netboot, answers.

Nothing here launches QEMU.  The pieces an image builder assembles:

* the pinned release (:data:`RELEASE`, one line to edit) and its base public key
  (:data:`BASE_KEYS`, from openbsd/src ``etc/signify/openbsd-NN-base.pub``);
  the mirror (:func:`mirror_url`, ``$SLATCHECK_OPENBSD_MIRROR`` overrides it);
* the files to fetch and verify (:func:`release_files`);
* the TFTP root of an unattended netboot (:func:`tftp_root`): ``pxeboot``
  named ``auto_install`` (the boot file name makes the installer start
  autoinstall(8) with no keystroke: ``dot.profile`` rev 1.52 and
  ``install.sub`` ``get_responsefile()``), ``bsd.rd``, ``etc/boot.conf``;
* the autoinstall response file (:func:`install_conf`) and disklabel template
  (:data:`DISKLABEL_TEMPLATE`), served with the sets from a loopback HTTP
  server that the guest reaches through QEMU's user network (:func:`qemu_netboot_args`);
* the first-boot commands (:func:`firstboot_commands`) and the raw-tar
  transfer disk that carries the workload in and ``/bsd.booted`` out
  (:func:`pack_transfer_disk`, :func:`unpack_transfer_disk`).

The install driver that watches the serial console is
:mod:`harness.images.openbsd_install`.

>>> release_files("7.9")[:4]
['SHA256.sig', 'SHA256', 'BUILDINFO', 'pxeboot']
"""

from __future__ import annotations

import io
import os
import tarfile
from dataclasses import dataclass
from pathlib import PurePosixPath

from harness.errors import InfraError

__all__ = ["RELEASE", "ARCH", "BASE_KEYS", "DEFAULT_MIRROR", "MIRROR_ENV", "Release",
           "release", "mirror_url", "release_files", "set_files", "tftp_root", "BOOT_CONF",
           "install_conf", "InstallAnswers", "DISKLABEL_TEMPLATE", "qemu_netboot_args",
           "HTTP_GUEST_ADDR", "firstboot_commands", "pack_transfer_disk",
           "unpack_transfer_disk", "TRANSFER_DEV", "WORKLOAD_DIR", "WORKLOAD_SOURCES",
           "WORKLOAD_FILES", "RESPONSE_URL", "index_txt", "KERNEL_OUT", "KARL_OFF"]

RELEASE = "7.9"                     # the pinned release: edit this line for a newer one
ARCH = "amd64"
DEFAULT_MIRROR = "https://cdn.openbsd.org/pub/OpenBSD"
MIRROR_ENV = "SLATCHECK_OPENBSD_MIRROR"

# openbsd/src etc/signify/openbsd-NN-base.pub (second line of each file).  7.9: read in a
# copy of openbsd/src of 2025-09 and on openbsd.org/79.html; 8.0 and 8.1: openbsd/src.
BASE_KEYS: dict[str, str] = {
    "7.9": "RWTSdNN9A3yvWNn7mUjXwv9DOCOUnyfuV+mq1iGPIfD+NhN8EYnEQ1at",
    "8.0": "RWSMSt0erHTctUxq2JDAgQRo64ztikp8JvQeiSPte3NZ0Geou0TkTEiE",
    "8.1": "RWQirufSCy10G6Y9Ou9ao2R9RbhzN6E+2hgB6n0Cbj3Eq1aEssZaeHJu",
}

# Sets the L1 needs: the kernels, base, and comp (the guest's own cc builds the workload).
SETS = ("bsd", "bsd.mp", "bsd.rd", "base{v}.tgz", "comp{v}.tgz", "man{v}.tgz")
# install.sub install_http(): pxeboot is "auto_install" so autoinstall starts by itself
BOOT_CONF = "set tty com0\nboot /bsd.rd\n"
# The guest reaches the loopback HTTP server through a guestfwd rule on this address of the
# user network: QEMU refuses a rule on the host alias 10.0.2.2 ("Conflicting/invalid
# host:port in guest forwarding rule"), so the DHCP next-server's default response file
# URL fails and the driver answers "Response file location?" with RESPONSE_URL.
HTTP_GUEST_ADDR = "10.0.2.100"
RESPONSE_URL = f"http://{HTTP_GUEST_ADDR}/install.conf"
TRANSFER_DEV = "/dev/rsd1c"         # the second virtio disk, whole ('c' partition), raw
WORKLOAD_DIR = "/root/slat-workload"
# images/workload/ files the guest compiles: the shared main.c and x86 guest code, and the
# vmm(4) backend; workload.h is needed too
WORKLOAD_SOURCES = ("main.c", "common.c", "hv_openbsd.c", "l2_x86.c")
WORKLOAD_FILES = (*WORKLOAD_SOURCES, "workload.h")


@dataclass(frozen=True)
class Release:
    """One OpenBSD release: "7.9", the short form "79", and its pinned base key."""

    version: str
    short: str
    base_key: str


def release(version: str = RELEASE) -> Release:
    """The release record; InfraError naming the pinned ones when the key is unknown."""
    if version not in BASE_KEYS:
        raise InfraError(f"no base public key pinned for OpenBSD {version} (pinned: "
                         f"{', '.join(sorted(BASE_KEYS))}); add etc/signify/"
                         f"openbsd-{version.replace('.', '')}-base.pub's key to BASE_KEYS")
    return Release(version, version.replace(".", ""), BASE_KEYS[version])


def mirror_url(version: str = RELEASE, arch: str = ARCH, mirror: str | None = None) -> str:
    """``<mirror>/<version>/<arch>``; the mirror from *mirror*, $SLATCHECK_OPENBSD_MIRROR
    or the CDN.

    >>> mirror_url("7.9", mirror="http://127.0.0.1:8000/pub/OpenBSD/")
    'http://127.0.0.1:8000/pub/OpenBSD/7.9/amd64'
    """
    base = mirror or os.environ.get(MIRROR_ENV) or DEFAULT_MIRROR
    return f"{base.rstrip('/')}/{version}/{arch}"


def set_files(version: str = RELEASE) -> list[str]:
    """The install sets the L1 gets (``base79.tgz``...)."""
    short = release(version).short
    return [s.format(v=short) for s in SETS]


def release_files(version: str = RELEASE) -> list[str]:
    """Every file to fetch from the release directory, signature files first.

    ``BUILDINFO`` is fetched because the installer installs it whenever the
    signed list names it (``install_files``).
    """
    return ["SHA256.sig", "SHA256", "BUILDINFO", "pxeboot", *set_files(version)]


def tftp_root(random_seed: bytes | None = None) -> dict[str, str | bytes]:
    """The netboot TFTP root: relative path -> a release file's name (str) or content.

    ``auto_install`` is ``pxeboot``; ``etc/boot.conf`` puts the console on com0
    and boots ``bsd.rd``; ``etc/random.seed`` feeds the boot loader (512 bytes).
    """
    return {"auto_install": "pxeboot", "bsd.rd": "bsd.rd",
            "etc/boot.conf": BOOT_CONF.encode(),
            "etc/random.seed": random_seed if random_seed is not None else os.urandom(512)}


@dataclass(frozen=True)
class InstallAnswers:
    """What the response file answers (keys match install.sub's questions)."""

    hostname: str = "l1"
    root_password: str = "slatcheck"
    interface: str = "em0"          # QEMU's e1000, the NIC that netboots through SeaBIOS
    disk: str = "sd0"               # the first virtio-blk disk
    http_server: str = HTTP_GUEST_ADDR
    version: str = RELEASE
    arch: str = ARCH
    timezone: str = "UTC"


def install_conf(a: InstallAnswers = InstallAnswers()) -> str:
    """The autoinstall(8) response file.

    Each key is matched case-insensitively against the question's text
    (``_autorespond``); a question with a default may stay unanswered.
    """
    http = f"http://{a.http_server}"
    lines = {
        "System hostname": a.hostname,
        "Network interface to configure": a.interface,
        f"IPv4 address for {a.interface}": "autoconf",
        f"IPv6 address for {a.interface}": "none",
        "Password for root account": a.root_password,
        "Public ssh key for root account": "none",
        "Start sshd(8) by default": "no",
        "Change the default console to com0": "yes",
        "Which speed should com0 use": "115200",
        "Setup a user": "no",
        "What timezone are you in": a.timezone,
        "Which disk is the root disk": a.disk,
        "Encrypt the root disk with a (p)assphrase or (k)eydisk": "no",
        "Use (W)hole disk MBR, whole disk (G)PT": "whole",
        "URL to autopartitioning template for disklabel": f"{http}/disklabel",
        "Location of sets": "http",
        "HTTP proxy URL": "none",
        "HTTP Server": http,
        "Server directory": f"pub/OpenBSD/{a.version}/{a.arch}",
        "Set name(s)": "-x* -game* done",
    }
    return "".join(f"{k} = {v}\n" for k, v in lines.items())


# disklabel(8) autopartitioning template: mount point, size range, share of the rest
DISKLABEL_TEMPLATE = "/\t1G-*\t95%\nswap\t64M-256M\t5%\n"


def _qemu_escape(value: str) -> str:
    """A value inside a QEMU option list: commas doubled."""
    return value.replace(",", ",,")


def qemu_netboot_args(tftp_dir: str, http_port: int, *, relay: list[str] | None = None,
                      guest_addr: str = HTTP_GUEST_ADDR, guest_port: int = 80,
                      model: str = "e1000") -> list[str]:
    """QEMU user-network arguments for the unattended netboot.

    DHCP hands out ``auto_install`` from the TFTP root; connections from the
    guest to *guest_addr*:*guest_port* (the DHCP next-server, port 80) are
    relayed by a ``guestfwd`` command to the loopback HTTP server on
    *http_port*.  *relay* is that command (default: this project's stdlib relay).

    >>> qemu_netboot_args("/t", 8080, relay=["socat", "-", "TCP:127.0.0.1:8080"])[1].split(",")[-1]
    'guestfwd=tcp:10.0.2.2:80-cmd:socat - TCP:127.0.0.1:8080'
    """
    cmd = relay or ["python3", "-m", "harness.images.tcprelay", "127.0.0.1", str(http_port)]
    netdev = ",".join([
        "user", "id=net0", f"tftp={_qemu_escape(tftp_dir)}", "bootfile=auto_install",
        f"guestfwd=tcp:{guest_addr}:{guest_port}-cmd:{_qemu_escape(' '.join(cmd))}"])
    return ["-netdev", netdev, "-device", f"{model},netdev=net0", "-boot", "order=nc"]


# KARL (etc/rc, libexec/reorder_kernel) relinks /bsd in the background at every boot, so
# the next boot runs another kernel.  The first boot waits for that relink, then turns it
# off: from then on /bsd is the kernel every boot of the image runs, and its copy is what
# symbols and types are read from (a run checks it against /bsd.booted).
KARL_OFF = "printf '#!/bin/sh\\nexit 0\\n' >/usr/libexec/reorder_kernel"
KERNEL_OUT = "bsd"                  # name of the kernel in the transfer disk's tar


def firstboot_commands(cc_flags: str = "-O2 -Wall -pthread",
                       sources: tuple[str, ...] = WORKLOAD_SOURCES) -> list[str]:
    """Shell commands run as root on the installed system's first boot, in order.

    Enable and start vmd, unpack the workload sources from the transfer disk,
    build them with the guest's own cc, wait for KARL's relink of ``/bsd`` and
    turn KARL off (:data:`KARL_OFF`), then write ``/bsd`` (the kernel every
    later boot runs, as ``/bsd.booted``: ``etc/rc``) back to the transfer disk.
    """
    d = WORKLOAD_DIR
    return [
        "rcctl enable vmd",
        "rcctl start vmd",
        f"mkdir -p {d} && tar -xf {TRANSFER_DEV} -C {d}",
        f"cd {d} && cc {cc_flags} -DSLAT_OPENBSD -o /usr/local/bin/slat-workload "
        + " ".join(sources),
        "while pgrep -qf reorder_kernel; do sleep 1; done",
        KARL_OFF,
        "sha256 /bsd",
        f"cd / && tar -cf {TRANSFER_DEV} {KERNEL_OUT}",
        "sync",
    ]


def index_txt(files: dict[str, int]) -> str:
    """The ``index.txt`` of a sets directory: one ``ls -l``-like line per file.

    The installer takes the last word of each line as a file name
    (``install.sub``; ``syspatch`` reads the mirror's the same way).

    >>> index_txt({"bsd.rd": 4848172}).split()[-1]
    'bsd.rd'
    """
    return "".join(f"-rw-r--r--  1 1000  1000  {size:>10} Jan  1 00:00 {name}\n"
                   for name, size in sorted(files.items()))


def pack_transfer_disk(files: dict[str, bytes], size: int) -> bytes:
    """A raw disk image of *size* bytes holding a ustar archive of *files*."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in sorted(files.items()):
            _check_member(name)
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    raw = buf.getvalue()
    if len(raw) > size:
        raise InfraError(f"transfer disk of {size} bytes too small for {len(raw)} bytes of tar")
    return raw + bytes(size - len(raw))


def unpack_transfer_disk(raw: bytes) -> dict[str, bytes]:
    """The regular files of the tar archive at the start of a raw disk image."""
    out = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                _check_member(member.name)
                fh = tar.extractfile(member)
                assert fh is not None
                out[member.name.lstrip("/")] = fh.read()
    except tarfile.TarError as exc:
        raise InfraError(f"the transfer disk holds no readable tar archive: {exc}") from exc
    return out


def _check_member(name: str) -> None:
    """Refuse archive names that climb out of their directory."""
    if ".." in PurePosixPath(name).parts:
        raise InfraError(f"refusing tar member {name!r}")
