"""The ``openbsd-autoinstall`` image builder: official media to a cached, customised disk.

Steps (each one a function below, the data they use in :mod:`harness.images.openbsd`):

1. :func:`fetch_release`: download ``SHA256.sig`` and the release files from the mirror
   (the recipe's ``mirror``, ``$SLATCHECK_OPENBSD_MIRROR`` over it) into
   ``<cache>/slatcheck/openbsd/<release>/<arch>/`` (progress, resume), then verify them
   with ``signify-openbsd`` and the release's pinned base key; anything unverified is
   deleted and the build fails.  A mirror that cannot be reached at all (no network)
   ends the build with :class:`~harness.errors.SkipScenario`, so a scenario is skipped.
2. :func:`run_install`: netboot the installer under QEMU's user network (TFTP root with
   ``pxeboot`` as ``auto_install``), serve the response file, the disklabel template and
   the sets from a loopback HTTP server (:func:`serving`) reached through a ``guestfwd``
   rule, and watch the serial console with :func:`~harness.images.openbsd_install.drive_install`.
3. :func:`first_boot`: boot the installed disk with a raw transfer disk holding the
   workload sources, log in as root, run :func:`~harness.images.openbsd.firstboot_commands`
   (vmd enabled, workload built by the guest's cc, KARL off), copy the kernel out.
4. The disk and kernel are cached (:mod:`harness.images.disk_image`); each run boots an
   overlay of the disk.

>>> needed_files("7.9")[:3]
['SHA256.sig', 'SHA256', 'BUILDINFO']
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from harness.arch import ARCHES
from harness.console import ConsoleProfile, GuestCommandError
from harness.errors import InfraError, SkipScenario
from harness.images import openbsd as ob
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
from harness.images.openbsd_install import drive_install
from harness.images.recipe import WORKLOAD_DIR
from harness.images.signify import VerifyError, verify_release
from harness.openbsd_console import CONSOLE

__all__ = ["build_openbsd_image", "fetch_release", "needed_files", "serving", "run_install",
           "first_boot", "check_kernel", "mirror_of", "release_dir", "PROBE_TIMEOUT"]

Progress = Callable[[str], None]
PROBE_TIMEOUT = 20.0           # seconds to decide that the mirror cannot be reached at all
INSTALL_SILENCE = 1800.0       # seconds without a console line during the install
FIRSTBOOT_TIMEOUT = 3600.0     # seconds for one first-boot command (cc under TCG)
_UNREACHABLE: dict[str, str] = {}   # mirror -> why it could not be reached, this process


def needed_files(version: str) -> list[str]:
    """The release files the install uses: signatures, pxeboot, the sets, INSTALL.<arch>."""
    return [*ob.release_files(version), f"INSTALL.{ob.ARCH}"]


def mirror_of(recipe: DiskRecipe) -> str:
    """``$SLATCHECK_OPENBSD_MIRROR``, else the recipe's ``mirror``, else the CDN."""
    return os.environ.get(ob.MIRROR_ENV) or str(recipe.data.get("mirror") or ob.DEFAULT_MIRROR)


def release_dir(version: str, cache_dir: Path | None = None) -> Path:
    """Where a release's verified files are kept."""
    return cache_root(cache_dir).parent / "openbsd" / version / ob.ARCH


def _probe(url: str) -> None:
    """SkipScenario when *url*'s server cannot be reached at all (no network here)."""
    base = url.rsplit("/", 1)[0]
    if base in _UNREACHABLE:
        raise SkipScenario(_UNREACHABLE[base])
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"),
                                    timeout=PROBE_TIMEOUT):
            return
    except urllib.error.HTTPError:
        return                     # the server answers: fetch() reports the real error
    except (OSError, ValueError) as exc:
        why = getattr(exc, "reason", exc)
        _UNREACHABLE[base] = (f"the OpenBSD image is not in the cache and the mirror {base} "
                              f"cannot be reached from here ({why}); build it where the "
                              "mirror is reachable (`slatcheck images build openbsd-amd64`) "
                              "or import a disk installed elsewhere (`slatcheck images "
                              "import openbsd-amd64 --disk FILE --kernel BSD`)")
        raise SkipScenario(_UNREACHABLE[base]) from exc


def fetch_release(version: str, mirror: str, dest: Path, progress: Progress) -> dict[str, str]:
    """Fetch the release files into *dest* and verify them; name -> SHA-256.

    Files that fail verification are deleted (a later build fetches them again)
    and the build fails with :class:`~harness.images.signify.VerifyError`.
    """
    rel = ob.release(version)
    base = ob.mirror_url(version, mirror=mirror)
    files = needed_files(version)
    if any(not (dest / f).is_file() for f in files):
        _probe(f"{base}/SHA256.sig")
    for name in files:
        try:
            fetch(f"{base}/{name}", dest, progress=progress)
        except FetchError as exc:
            raise InfraError(f"OpenBSD {version}: {exc}") from exc
    signed = [f for f in files if f not in ("SHA256.sig", "SHA256")]
    try:
        digests = verify_release(dest, signed, rel.base_key)
    except VerifyError:
        for name in files:
            (dest / name).unlink(missing_ok=True)
        raise
    progress(f"OpenBSD {version}: {len(digests)} files verified with the pinned base key")
    return dict(digests)


def _handler(routes: dict[str, Path | bytes], log: list[str]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:   # noqa: A002
            log.append(format % args)

        def do_GET(self) -> None:            # noqa: N802 - http.server's name
            body = routes.get(self.path.split("?", 1)[0])
            if body is None:
                self.send_error(404)
                return
            data = body.read_bytes() if isinstance(body, Path) else body
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_HEAD = do_GET                     # noqa: N815

    return Handler


@contextmanager
def serving(routes: dict[str, Path | bytes]) -> Iterator[tuple[int, list[str]]]:
    """An HTTP server on 127.0.0.1:<free port> serving *routes* (path -> file or bytes).

    Yields the port and the request log; stops when the block ends.
    """
    log: list[str] = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(routes, log))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], log
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def install_routes(version: str, files: Path, answers: ob.InstallAnswers
                   ) -> dict[str, Path | bytes]:
    """What the installer fetches: the response file, the template, the sets directory."""
    sets = f"/pub/OpenBSD/{version}/{ob.ARCH}"
    names = [f for f in needed_files(version) if f != "pxeboot"]
    routes: dict[str, Path | bytes] = {f"{sets}/{n}": files / n for n in names}
    routes[f"{sets}/index.txt"] = ob.index_txt(
        {n: (files / n).stat().st_size for n in names}).encode()
    routes["/install.conf"] = ob.install_conf(answers).encode()
    routes["/disklabel"] = ob.DISKLABEL_TEMPLATE.encode()
    return routes


def _tftp(tftp: Path, files: Path) -> None:
    """The TFTP root: pxeboot as auto_install, bsd.rd, etc/boot.conf, etc/random.seed."""
    for rel, what in ob.tftp_root().items():
        path = tftp / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes((files / what).read_bytes() if isinstance(what, str) else what)


def _machine(recipe: DiskRecipe, disk: Path, logs: Path, name: str,
             network: tuple[str, ...] = (), extra: tuple[str, ...] = ()) -> Any:
    from harness.machines.base import DiskBoot, MachineConfig
    from harness.machines.qemu import QemuMachine
    config = MachineConfig(arch=ARCHES[recipe.arch], boot=DiskBoot(disk, "qcow2",
                           network=network, writable=True), artifacts=logs, cpu=recipe.cpu,
                           memory=recipe.memory, name=name, extra_args=extra)
    return QemuMachine(config)


def _wait_exit(machine: Any, timeout: float, what: str) -> None:
    """Wait for QEMU to exit by itself (-no-reboot: the guest rebooted or halted)."""
    deadline = time.monotonic() + timeout
    while machine.alive():
        if time.monotonic() > deadline:
            raise InfraError(f"{what}: QEMU did not exit within {timeout:.0f} s")
        time.sleep(1)


def run_install(recipe: DiskRecipe, files: Path, disk: Path, logs: Path,
                progress: Progress) -> None:
    """Netboot the installer and drive it to CONGRATULATIONS; the disk is then installed."""
    import pexpect.fdpexpect

    from harness.console import open_endpoint
    answers = ob.InstallAnswers(root_password=recipe.login_password, version=recipe.release,
                                hostname=str(recipe.data.get("hostname", "l1")))
    tftp = logs / "tftp"
    _tftp(tftp, files)
    with serving(install_routes(recipe.release, files, answers)) as (port, http_log):
        network = tuple(ob.qemu_netboot_args(str(tftp), port))
        with _machine(recipe, disk, logs, "obsd-install", network) as m, \
                open(logs / "install-console.log", "w") as clog:
            child = pexpect.fdpexpect.fdspawn(open_endpoint(m.console), encoding="utf-8",
                                              codec_errors="replace", timeout=INSTALL_SILENCE)
            child.logfile_read = clog
            try:
                drive_install(child, response_url=ob.RESPONSE_URL,
                              step_timeout=INSTALL_SILENCE, log=progress)
                _wait_exit(m, 600, "after the install")
            finally:
                (logs / "install-http.log").write_text("\n".join(http_log) + "\n")
                child.close()


def first_boot(recipe: DiskRecipe, disk: Path, logs: Path, progress: Progress) -> bytes:
    """Boot the installed disk once to customise it; the kernel it wrote out."""
    from harness.console import Console
    from harness.openbsd_console import VMM_ATTACH
    from harness.serial_login import serial_login
    sources = {name: (WORKLOAD_DIR / name).read_bytes() for name in ob.WORKLOAD_FILES}
    transfer = logs / "transfer.raw"
    transfer.write_bytes(ob.pack_transfer_disk(sources, 64 << 20))
    extra = ("-drive", f"file={transfer},format=raw,if=virtio")
    profile = _profile()
    with _machine(recipe, disk, logs, "obsd-firstboot", extra=extra) as m, \
            Console.connect(m.console, log_path=logs / "firstboot-console.log",
                            profile=profile) as con:
        serial_login(con, recipe.login_user, recipe.login_password, timeout=1800)
        dmesg = con.run("dmesg", timeout=60).output
        if not VMM_ATTACH.search(dmesg):
            raise InfraError("first boot: vmm(4) did not attach (no 'vmm0 at mainbus0: "
                             f"SVM/RVI' or 'VMX/EPT' in dmesg); CPU {recipe.cpu!r} lacks "
                             "SVM with nested paging?")
        for cmd in ob.firstboot_commands():
            progress(f"first boot: {cmd}")
            try:
                con.run(cmd, timeout=FIRSTBOOT_TIMEOUT)
            except GuestCommandError as exc:
                raise InfraError(f"first boot of the OpenBSD image failed: {exc}") from exc
        con.send_line("halt -p")
        _wait_exit(m, 600, "first boot")
    files = ob.unpack_transfer_disk(transfer.read_bytes())
    if ob.KERNEL_OUT not in files:
        raise InfraError(f"first boot wrote no {ob.KERNEL_OUT} to the transfer disk "
                         f"(it holds {sorted(files)})")
    return files[ob.KERNEL_OUT]


def _profile() -> ConsoleProfile:
    return CONSOLE


def check_kernel(kernel: bytes) -> None:
    """Refuse a kernel without the symbols or the CTF types the OpenBSD observer needs."""
    from harness.ctf import Ctf
    from harness.discovery.openbsd_proc import PROC_SYMBOLS
    from harness.discovery.openbsd_vmm import NEEDED_SYMBOLS, nested_pmap_design
    from harness.elf_symbols import elf_symbols
    elf_symbols(kernel, [*NEEDED_SYMBOLS, *PROC_SYMBOLS])
    nested_pmap_design(Ctf.from_elf(kernel))


def _make(recipe: DiskRecipe, cache_dir: Path | None, progress: Progress
          ) -> Callable[[Path], dict[str, Any]]:
    def make(out: Path) -> dict[str, Any]:
        files = release_dir(recipe.release, cache_dir)
        digests = fetch_release(recipe.release, mirror_of(recipe), files, progress)
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(out / DISK),
                        str(recipe.disk_size)], check=True, capture_output=True, timeout=60)
        logs = out / "logs"
        logs.mkdir()
        progress(f"OpenBSD {recipe.release}: installing (netboot, autoinstall)")
        run_install(recipe, files, out / DISK, logs, progress)
        progress(f"OpenBSD {recipe.release}: first boot (vmd, workload, kernel)")
        kernel = first_boot(recipe, out / DISK, logs, progress)
        check_kernel(kernel)
        (out / KERNEL).write_bytes(kernel)
        (logs / "transfer.raw").unlink(missing_ok=True)
        return {"release_files": digests, "mirror": mirror_of(recipe), "cpu": recipe.cpu,
                "workload": list(ob.WORKLOAD_FILES)}
    return make


def build_openbsd_image(name: str, progress: Progress = print,
                        cache_dir: Path | None = None) -> Image:
    """The cached OpenBSD image *name*, or build it (SkipScenario when it cannot be here)."""
    recipe = load_disk_recipe(name)
    image = cached_disk_image(recipe, cache_dir)
    if image is not None:
        progress(f"image {name}: cached in {image.dir}")
        return image
    progress(f"image {name}: not in the cache ({disk_image_dir(recipe, cache_dir)})")
    files = release_dir(recipe.release, cache_dir)
    if any(not (files / f).is_file() for f in needed_files(recipe.release)):
        _probe(f"{ob.mirror_url(recipe.release, mirror=mirror_of(recipe))}/SHA256.sig")
    return install_disk_image(recipe, _make(recipe, cache_dir, progress), cache_dir, progress)
