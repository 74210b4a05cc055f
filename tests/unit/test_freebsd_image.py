"""The freebsd-basic-ci builder offline: the recipe and URLs, fetch and check from a
loopback mirror with a checksum file, sparse decompression, the qcow2 disk, the first
boot against a scripted getty and shell, the whole build into a cache, the skip path
with no mirror, and ``images import``."""

from __future__ import annotations

import hashlib
import io
import json
import lzma
import os
import shutil
import socket
import subprocess
import tarfile
from pathlib import Path

import pytest
from bsd_fakes import FREEBSD_BANNER, scripted_factory
from ctf_writer import CtfWriter
from http_fixture import mirror
from test_discovery_freebsd import freebsd_types

from harness.cli import main
from harness.ctf import CtfError
from harness.elf_symbols import SymbolError
from harness.errors import SkipScenario
from harness.images import freebsd as fb
from harness.images import freebsd_builder as builder
from harness.images.disk_image import DiskRecipe, load_disk_recipe
from harness.images.signify import VerifyError
from harness.images.unpack import UnpackError, decompress
from harness.machines.fake import FakeGuest, Rule
from harness.runner import run_scenario
from harness.scenario import load_scenario

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "scenarios" / "freebsd" / "bhyve-smoke.yaml"
QEMU_IMG = shutil.which("qemu-img")
TOOLS = shutil.which("cc") and shutil.which("objcopy")
RELEASE = "14.3"


def closed_port() -> str:
    """A loopback URL nothing listens on (the mirror of a machine without network)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/releases"


def raw_disk() -> bytes:
    """A 16 MiB 'disk': zeros but for a boot block, some data in the middle and an end."""
    disk = bytearray(16 << 20)
    disk[0:10] = b"\xeb\x3c\x90FreeBSD"
    disk[6 << 20:(6 << 20) + 6000] = b"rootfs" * 1000
    disk[-11:] = b"end-of-disk"
    return bytes(disk)


def ci_mirror(root: Path, data: bytes, listed: bytes | None = None) -> tuple[Path, str]:
    """``CI-IMAGES/<release>-RELEASE/amd64/Latest`` with the image and its checksum file."""
    d = root / "CI-IMAGES" / f"{RELEASE}-RELEASE" / "amd64" / "Latest"
    d.mkdir(parents=True)
    xz = lzma.compress(data)
    name = fb.image_file(RELEASE)
    (d / name).write_bytes(xz)
    digest = hashlib.sha256(listed if listed is not None else xz).hexdigest()
    (d / fb.CHECKSUM_FILE).write_text(f"SHA256 (FreeBSD-{RELEASE}-RELEASE-amd64-BASIC-CI.raw) "
                                      f"= {'0' * 64}\nSHA256 ({name}) = {digest}\n")
    return d, hashlib.sha256(xz).hexdigest()


def recipe(url: str, pin: str | None = None, tmp: Path | None = None) -> DiskRecipe:
    data = {"mirror": url, **({"sha256": pin} if pin else {})}
    return DiskRecipe("freebsd-amd64", "freebsd", "x86_64", "freebsd-basic-ci", RELEASE,
                      login_user="root", login_password="", cpu="max", memory=1 << 30,
                      disk_size=32 << 20, data=data,
                      path=tmp / "recipe.yaml" if tmp else Path("recipe.yaml"))


def test_the_recipe_pins_a_release_and_a_digest() -> None:
    r = load_disk_recipe("freebsd-amd64")
    assert (r.os, r.arch, r.builder, r.release) == ("freebsd", "x86_64", "freebsd-basic-ci",
                                                     RELEASE)
    assert len(str(r.data["sha256"])) == 64 and int(str(r.data["sha256"]), 16)
    assert (r.login_user, r.login_password) == ("root", "")
    assert "-la57" in r.cpu
    assert fb.image_dir_url(RELEASE) == \
        "https://download.freebsd.org/releases/CI-IMAGES/14.3-RELEASE/amd64/Latest"


def test_mirror_override(monkeypatch: pytest.MonkeyPatch) -> None:
    assert fb.mirror_of({"mirror": "http://a/"}) == "http://a/"
    monkeypatch.setenv(fb.MIRROR_ENV, "http://b/")
    assert fb.mirror_of({"mirror": "http://a/"}) == "http://b/"
    monkeypatch.delenv(fb.MIRROR_ENV)
    assert fb.mirror_of({}) == fb.DEFAULT_MIRROR


def test_firstboot_builds_the_bhyve_backend_and_copies_the_kernel_out() -> None:
    cmds = fb.firstboot_commands()
    build = next(c for c in cmds if " cc " in c)
    assert "-DSLAT_FREEBSD" in build
    assert build.endswith("main.c common.c hv_freebsd.c l2_x86.c -lvmmapi")
    assert cmds[0].endswith(f"tar -xf {fb.TRANSFER_DEV} -C {fb.WORKLOAD_DIR}")
    assert f"tar -cf {fb.TRANSFER_DEV} -C /boot/kernel kernel vmm.ko" in cmds
    assert set(fb.WORKLOAD_FILES) <= {p.name for p in (ROOT / "images" / "workload").iterdir()}


def test_fetch_checks_the_image_against_the_checksum_file_and_the_pin(tmp_path: Path) -> None:
    d, digest = ci_mirror(tmp_path / "m", raw_disk())
    with mirror(tmp_path / "m") as m:
        got = builder.fetch_image(recipe(m.url, digest), tmp_path / "c", lambda _l: None)
        assert got[fb.image_file(RELEASE)] == digest
        # a pin the checksum file does not agree with: refused, the checksum file dropped
        with pytest.raises(VerifyError, match="the file on the mirror changed"):
            builder.fetch_image(recipe(m.url, "ab" * 32), tmp_path / "c", lambda _l: None)
        assert not (tmp_path / "c" / fb.CHECKSUM_FILE).exists()
    # an image whose digest the checksum file does not list is deleted
    bad, _ = ci_mirror(tmp_path / "m2", raw_disk(), listed=b"another file")
    with mirror(tmp_path / "m2") as m:
        with pytest.raises(VerifyError, match="differs from"):
            builder.fetch_image(recipe(m.url), tmp_path / "c2", lambda _l: None)
        assert not (tmp_path / "c2" / fb.image_file(RELEASE)).exists()
    with pytest.raises(VerifyError, match="does not list"):
        fb.expected_digest("SHA256 (other.raw.xz) = " + "00" * 32 + "\n", "x.raw.xz")
    with pytest.raises(VerifyError, match="CHECKSUM.SHA256"):
        fb.expected_digest("MD5 (x.raw.xz) = 1234\n", "x.raw.xz")


def test_decompress_is_sparse_and_refuses_a_truncated_archive(tmp_path: Path) -> None:
    data = raw_disk()
    (tmp_path / "d.raw.xz").write_bytes(lzma.compress(data))
    size = decompress(tmp_path / "d.raw.xz", tmp_path / "d.raw")
    assert size == len(data) and (tmp_path / "d.raw").read_bytes() == data
    assert os.stat(tmp_path / "d.raw").st_blocks * 512 <= 3 << 20     # 13 MiB of holes
    whole = lzma.compress(data)
    (tmp_path / "t.raw.xz").write_bytes(whole[:len(whole) // 2])
    with pytest.raises(UnpackError, match="cannot decompress t.raw.xz"):
        decompress(tmp_path / "t.raw.xz", tmp_path / "t.raw")
    assert not (tmp_path / "t.raw").exists() and not (tmp_path / "t.raw.part").exists()
    with pytest.raises(UnpackError, match="no decompressor"):
        decompress(tmp_path / "d.raw", tmp_path / "x")


@pytest.mark.skipif(QEMU_IMG is None, reason="needs qemu-img")
def test_make_disk_is_a_grown_qcow2(tmp_path: Path) -> None:
    (tmp_path / "d.raw.xz").write_bytes(lzma.compress(raw_disk()))
    builder.make_disk(tmp_path / "d.raw.xz", tmp_path / "disk.qcow2", 32 << 20, tmp_path,
                      lambda _l: None)
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json",
                                      str(tmp_path / "disk.qcow2")], capture_output=True,
                                     text=True, check=True).stdout)
    assert (info["format"], info["virtual-size"]) == ("qcow2", 32 << 20)
    assert not (tmp_path / "base.raw").exists()


def kernel_elf(tmp: Path, symbols: tuple[str, ...] = ("cdevp_list", "allproc"),
               ctf: bytes | None = None) -> bytes:
    """An ELF with the kernel's symbols and a FreeBSD CTF section, as check_kernel reads."""
    src = "".join(f"void *{s};\n" for s in symbols)
    (tmp / "k.c").write_text(src or "int nothing;\n")
    subprocess.run(["cc", "-c", "-o", str(tmp / "k.o"), str(tmp / "k.c")], check=True)
    (tmp / "ctf.bin").write_bytes(ctf if ctf is not None else freebsd_types().kernel.blob())
    subprocess.run(["objcopy", "--add-section", f".SUNW_ctf={tmp / 'ctf.bin'}",
                    str(tmp / "k.o"), str(tmp / "kernel")], check=True)
    return (tmp / "kernel").read_bytes()


@pytest.mark.skipif(not TOOLS, reason="needs cc and objcopy")
def test_check_kernel_wants_the_symbols_and_the_types(tmp_path: Path) -> None:
    builder.check_kernel(kernel_elf(tmp_path))
    with pytest.raises(SymbolError, match="allproc"):
        builder.check_kernel(kernel_elf(tmp_path, symbols=("cdevp_list",)))
    w = CtfWriter("freebsd", version=3)
    w.struct("struct pmap", [("pm_cr3", w.int_("unsigned long", 8))])
    with pytest.raises(CtfError, match="struct cdev_priv"):
        builder.check_kernel(kernel_elf(tmp_path, ctf=w.blob()))


def fake_freebsd(kernel: bytes, vmm: bytes, transfer: list[Path]) -> FakeGuest:
    """The BASIC-CI guest's side of the first boot: the commands it runs, the transfer
    disk written on ``tar -cf`` (*transfer* holds its path once the machine exists)."""
    def write_back(_m: object) -> tuple[str, int]:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for name, data in (("kernel", kernel), ("vmm.ko", vmm)):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        with open(transfer[0], "r+b") as f:
            f.write(buf.getvalue())
        return "", 0
    return FakeGuest([
        Rule(r"^mkdir -p /root/slat-workload /usr/local/bin && tar -xf /dev/vtbd1"),
        Rule(r" cc -O2 -Wall -pthread -DSLAT_FREEBSD "),
        Rule(r"^sha256 -q /boot/kernel/kernel", "ab12\ncd34\n"),
        Rule(r"^tar -cf /dev/vtbd1 -C /boot/kernel kernel vmm.ko$", answer=write_back),
        Rule(r"^sync$"),
        Rule(r"^grep -E .* /var/run/dmesg.boot$",
             '  Origin="AuthenticAMD"  Id=0x663\n  AMD Features2=0x1f3<LAHF,CMP,SVM>\n'
             "  SVM: NP,NAsids=16\n"),
        Rule(r"^kldload -n vmm", "kldload: can't load vmm: Device not configured\n"
             "kldload-status 1\nSVM: NRIP Save feature not available.\n"),
    ])


@pytest.mark.skipif(not (QEMU_IMG and TOOLS), reason="needs qemu-img, cc and objcopy")
def test_the_whole_build_offline(tmp_path: Path) -> None:
    """Loopback mirror -> checked image -> qcow2 -> scripted first boot -> cached image."""
    kernel = kernel_elf(tmp_path)
    transfer: list[Path] = []
    guest = fake_freebsd(kernel, b"vmm.ko bytes", transfer)
    make = scripted_factory(guest, FREEBSD_BANNER)

    def machine(*args: object, **kw: object) -> object:
        transfer.append(kw["transfer"])                      # type: ignore[arg-type]
        return make(*args, **kw)

    _d, digest = ci_mirror(tmp_path / "m", raw_disk())
    (tmp_path / "recipe.yaml").write_text("name: freebsd-amd64\n")
    with mirror(tmp_path / "m") as m:
        r = recipe(m.url, digest, tmp_path)
        image = builder.install_disk_image(
            r, builder._make(r, tmp_path / "cache", lambda _l: None, machine),
            tmp_path / "cache", lambda _l: None)
    assert image.disk is not None and image.disk.is_file()
    assert Path(image.kernel).read_bytes() == kernel
    assert (image.dir / "vmm.ko").read_bytes() == b"vmm.ko bytes"
    man = image.manifest
    assert man["release_files"][fb.image_file(RELEASE)] == digest
    assert "SVM: NRIP Save feature not available." in man["firstboot"]["vmm_load"]
    assert man["modules"]["vmm.ko"] == hashlib.sha256(b"vmm.ko bytes").hexdigest()
    assert man["files"]["kernel"] == hashlib.sha256(kernel).hexdigest()
    typed = guest.typed
    assert typed[0].startswith("mkdir -p /root/slat-workload") and typed[-1].startswith(
        "kldload -n vmm")
    assert not (image.dir / "logs" / "transfer.raw").exists()
    assert "login: " in (image.dir / "logs" / "firstboot-console.log").read_text()


def test_no_image_and_no_mirror_is_a_skip_with_the_reason(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv(fb.MIRROR_ENV, closed_port())
    with pytest.raises(SkipScenario, match="not in the cache"):
        builder.build_freebsd_image("freebsd-amd64", lambda _l: None)
    res = run_scenario(load_scenario(SMOKE), tmp_path / "art")
    assert res.verdict == "skip" and res.status == 0 and res.outcome == "skipped", res.message
    assert "images import freebsd-amd64" in res.message
    assert not list((tmp_path / "art").glob("*/qemu.cmdline"))           # nothing booted
    assert not list((tmp_path / "art").glob("*/traceback.txt"))
    assert main(["images", "build", "freebsd-amd64"]) == 3


@pytest.mark.skipif(not (QEMU_IMG and TOOLS), reason="needs qemu-img, cc and objcopy")
def test_import_a_disk_made_elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    (tmp_path / "disk.raw").write_bytes(raw_disk())
    kernel = kernel_elf(tmp_path)
    (tmp_path / "vmm.ko").write_bytes(b"module")
    assert main(["images", "import", "freebsd-amd64", "--disk", str(tmp_path / "disk.raw"),
                 "--kernel", str(tmp_path / "kernel"), "--module",
                 str(tmp_path / "vmm.ko")]) == 0
    image = builder.build_freebsd_image("freebsd-amd64", lambda _l: None)   # now cached
    assert Path(image.kernel).read_bytes() == kernel
    assert (image.dir / "vmm.ko").read_bytes() == b"module"
    assert image.manifest["imported"]["modules"] == [str(tmp_path / "vmm.ko")]
    # a kernel without what discovery needs is refused
    kernel_elf(tmp_path, symbols=("cdevp_list",))
    assert main(["images", "import", "freebsd-amd64", "--disk", str(tmp_path / "disk.raw"),
                 "--kernel", str(tmp_path / "kernel")]) == 3
    assert "symbols not defined in the kernel's .symtab: allproc" in capsys.readouterr().err
