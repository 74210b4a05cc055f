"""The dragonfly-live builder offline: the recipes, MD5 lists and the SHA-256 pin, fetch and
check from a loopback mirror, the first boot's loader dialogue and commands against a
scripted guest, the whole build with a user kernel (its DWARF kept, a stripped copy
installed), the skip paths (no user kernel, no mirror), a cached image built with
another kernel, and ``images import``."""

from __future__ import annotations

import bz2
import hashlib
import io
import json
import shutil
import socket
import subprocess
import tarfile
from pathlib import Path

import pytest
from bsd_fakes import scripted_factory
from http_fixture import mirror
from test_discovery_dragonfly import kernel_elf

from harness.cli import main
from harness.dwarf import types_from_json
from harness.errors import InfraError, SkipScenario
from harness.images import dragonfly as df
from harness.images import dragonfly_builder as builder
from harness.images.disk_image import DiskRecipe, load_disk_recipe
from harness.images.signify import VerifyError
from harness.machines.fake import FakeGuest, Rule
from harness.runner import run_scenario
from harness.scenario import load_scenario

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "scenarios" / "dragonfly" / "vkernel-smoke.yaml"
STOCK = ROOT / "scenarios" / "dragonfly" / "vkernel-stock.yaml"
TOOLS = shutil.which("gcc") and shutil.which("objcopy")
QEMU_IMG = shutil.which("qemu-img")
RELEASE = "6.4.2"
LOADER = ("\r\nDragonFly loader\r\n 1. Boot DragonFly [kernel]\r\n 9. Escape to loader prompt "
          "(also ESC)\r\nBooting in 10 seconds... ")
DIALOGUE = {"\x1b": "\r\nOK ", "set console=comconsole": "OK ",
            "boot -s": "Copyright (c) 2003-2024 The DragonFly Project.\r\n...\r\n"
                       "Enter full pathname of shell or RETURN for /bin/sh: ",
            "": "# "}


def closed_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/iso-images"


def raw_disk() -> bytes:
    disk = bytearray(8 << 20)
    disk[0:12] = b"\xeb\x3c\x90DragonFly"
    disk[3 << 20:(3 << 20) + 4000] = b"hammer" * 666 + b"ha"
    return bytes(disk)


def dfly_mirror(root: Path, data: bytes, md5: str | None = "listed") -> tuple[str, str]:
    """``iso-images/`` with the image and (unless None) an md5.txt; (sha256, md5)."""
    root.mkdir(parents=True)
    packed = bz2.compress(data)
    name = df.image_file(RELEASE)
    (root / name).write_bytes(packed)
    sha, digest = hashlib.sha256(packed).hexdigest(), hashlib.md5(packed).hexdigest()
    if md5 is not None:
        listed = digest if md5 == "listed" else md5
        (root / df.CHECKSUM_FILE).write_text(
            f"MD5 (dfly-x86_64-{RELEASE}_REL.iso) = {'0' * 32}\nMD5 ({name}) = {listed}\n")
    return sha, digest


def recipe(url: str, pin: str | None = None, tmp: Path | None = None,
           user_kernel: bool = False) -> DiskRecipe:
    data = {"mirror": url, **({"sha256": pin} if pin else {}),
            **({"user_kernel": "required"} if user_kernel else {})}
    return DiskRecipe("dragonfly-amd64", "dragonfly", "x86_64", "dragonfly-live", RELEASE,
                      login_user="root", login_password="", cpu="max", memory=1 << 30,
                      disk_size=16 << 20, data=data,
                      path=tmp / "recipe.yaml" if tmp else Path("recipe.yaml"))


def test_the_recipes() -> None:
    stock, vk = load_disk_recipe("dragonfly-amd64"), load_disk_recipe("dragonfly-amd64-vkernel")
    for r in (stock, vk):
        assert (r.os, r.arch, r.builder, r.release) == ("dragonfly", "x86_64", "dragonfly-live",
                                                         RELEASE)
        assert (r.login_user, r.login_password, r.console) == ("root", "", "ttyd0")
        assert "-la57" in r.cpu and r.data["mirror"] == df.DEFAULT_MIRROR
    assert "user_kernel" not in stock.data and vk.data["user_kernel"] == "required"
    assert df.image_url(df.image_file(RELEASE)) == \
        "https://mirror-master.dragonflybsd.org/iso-images/dfly-x86_64-6.4.2_REL.img.bz2"


def test_md5_lists_and_the_digest_policy() -> None:
    listed = df.parse_md5_list("# comment\nMD5 (a.img.bz2) = " + "AB" * 16 + "\n"
                               + "cd" * 16 + "  b.iso\n")
    assert listed == {"a.img.bz2": "ab" * 16, "b.iso": "cd" * 16}
    with pytest.raises(VerifyError, match="twice"):
        df.parse_md5_list("MD5 (a) = " + "ab" * 16 + "\nMD5 (a) = " + "cd" * 16 + "\n")
    sha, md5 = "11" * 32, "22" * 16
    assert df.check_digests("f", sha, md5, pinned=sha, published=md5) == [
        "sha256 pinned in the recipe", "md5 listed in md5.txt"]
    assert df.check_digests("f", sha, md5, pinned=None, published=md5) == ["md5 listed in md5.txt"]
    with pytest.raises(VerifyError, match="the file on the mirror changed"):
        df.check_digests("f", sha, md5, pinned="33" * 32, published=md5)
    with pytest.raises(VerifyError, match="md5.txt lists"):
        df.check_digests("f", sha, md5, pinned=sha, published="44" * 16)
    with pytest.raises(VerifyError, match="nothing vouches"):
        df.check_digests("f", sha, md5, pinned=None, published=None)
    assert df.published_md5(None, "f") is None


def test_mirror_and_kernel_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(df.MIRROR_ENV, "http://b/")
    assert df.mirror_of({"mirror": "http://a/"}) == "http://b/"
    monkeypatch.delenv(df.MIRROR_ENV)
    assert df.mirror_of({}) == df.DEFAULT_MIRROR
    assert df.user_kernel_of({}) is None
    assert df.user_kernel_of({"kernel": "/k/kernel.debug"}) == Path("/k/kernel.debug")
    monkeypatch.setenv(df.KERNEL_ENV, "/env/kernel.debug")
    assert df.user_kernel_of({"kernel": "/k/kernel.debug"}) == Path("/env/kernel.debug")


def test_firstboot_commands() -> None:
    plain = df.firstboot_commands()
    assert plain[0] == "mount -u -w /"
    build = next(c for c in plain if " cc " in c)
    assert build.endswith("-o /usr/local/bin/slat-workload vkernel_dfly.c vkernel_tables.c")
    assert not any("user-kernel" in c for c in plain)
    assert any("getty std.9600" in c and "/etc/ttys" in c for c in plain)
    assert any('console=\\"comconsole\\"' in c or 'console="comconsole"' in c for c in plain)
    assert f"tar -cf {df.TRANSFER_DEV} -C /root/slat-workload kernel" in plain[-2]
    with_kernel = df.firstboot_commands(user_kernel=True)
    assert any(c.startswith("mv /boot/kernel/kernel /boot/kernel/kernel.stock && cp ") for c
               in with_kernel)
    assert set(df.WORKLOAD_FILES) <= {p.name for p in (ROOT / "images" / "workload").iterdir()}


def test_fetch_checks_the_pin_and_the_published_md5(tmp_path: Path) -> None:
    sha, _md5 = dfly_mirror(tmp_path / "m", raw_disk())
    said: list[str] = []
    with mirror(tmp_path / "m") as m:
        got = builder.fetch_image(recipe(m.url, sha), tmp_path / "c", said.append)
        assert got["sha256"] == sha and got["checked"] == ["sha256 pinned in the recipe",
                                                           "md5 listed in md5.txt"]
        with pytest.raises(VerifyError, match="the file on the mirror changed"):
            builder.fetch_image(recipe(m.url, "ab" * 32), tmp_path / "c", said.append)
        assert not (tmp_path / "c" / df.image_file(RELEASE)).exists()     # deleted
        said.clear()
        got = builder.fetch_image(recipe(m.url), tmp_path / "c2", said.append)  # no pin
        assert got["checked"] == ["md5 listed in md5.txt"]
        assert any(f"sha256: {sha}" in line for line in said)              # what to pin
    dfly_mirror(tmp_path / "m2", raw_disk(), md5=None)
    with mirror(tmp_path / "m2") as m:
        with pytest.raises(VerifyError, match="nothing vouches"):
            builder.fetch_image(recipe(m.url), tmp_path / "c3", said.append)
        assert builder.fetch_image(recipe(m.url, hashlib.sha256(bz2.compress(raw_disk()))
                                          .hexdigest()), tmp_path / "c3", said.append)
    dfly_mirror(tmp_path / "m3", raw_disk(), md5="ee" * 16)
    with mirror(tmp_path / "m3") as m:
        with pytest.raises(VerifyError, match="md5.txt lists"):
            builder.fetch_image(recipe(m.url), tmp_path / "c4", said.append)


def fake_dragonfly(transfer: list[Path]) -> FakeGuest:
    """The live image's side of the first boot (single-user sh): the commands, and the
    transfer disk's user kernel copied back out as the booted kernel."""
    def write_back(_m: object) -> tuple[str, int]:
        with open(transfer[0], "rb") as f:
            raw = f.read()
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tar:
            names = tar.getnames()
            src = tar.extractfile("user-kernel" if "user-kernel" in names else "vkernel.h")
            assert src is not None
            kernel = src.read()
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            info = tarfile.TarInfo("kernel")
            info.size = len(kernel)
            tar.addfile(info, io.BytesIO(kernel))
        with open(transfer[0], "r+b") as f:
            f.write(buf.getvalue())
        return "", 0
    return FakeGuest([
        Rule(r"^mount -u -w /$"),
        Rule(r"^mkdir -p /root/slat-workload /usr/local/bin && tar -xf /dev/vbd1"),
        Rule(r" cc -O2 -Wall -o /usr/local/bin/slat-workload vkernel_dfly.c "),
        Rule(r"^mv /boot/kernel/kernel /boot/kernel/kernel.stock && cp "),
        Rule(r"^sed -i '' -e 's\|\^ttyd0", 'ttyd0 "/usr/libexec/getty std.9600" vt100 on secure\n'),
        Rule(r"^printf '%s\\n' 'console="),
        Rule(r"^cp /boot/kernel/kernel /root/slat-workload/kernel && tar -cf /dev/vbd1",
             answer=write_back),
        Rule(r"^sync$"),
    ])


def machine_factory(guest: FakeGuest, transfer: list[Path], extras: list[object]) -> object:
    make = scripted_factory(guest, LOADER, dialogue=dict(DIALOGUE))

    def machine(*args: object, **kw: object) -> object:
        transfer.append(kw["transfer"])                      # type: ignore[arg-type]
        extras.append(kw.get("extra"))
        return make(*args, **kw)
    return machine


@pytest.mark.skipif(not (QEMU_IMG and TOOLS), reason="needs qemu-img, gcc and objcopy")
def test_the_whole_build_offline_with_a_user_kernel(tmp_path: Path) -> None:
    """Loopback mirror -> checked image -> qcow2 -> loader dialogue and single-user first
    boot (scripted) -> cached image with the stripped kernel and its DWARF types."""
    debug = tmp_path / "kernel.debug"
    debug.write_bytes(kernel_elf(tmp_path))
    transfer: list[Path] = []
    extras: list[object] = []
    guest = fake_dragonfly(transfer)
    sha, _md5 = dfly_mirror(tmp_path / "m", raw_disk())
    (tmp_path / "recipe.yaml").write_text("name: dragonfly-amd64\n")
    with mirror(tmp_path / "m") as m:
        r = recipe(m.url, sha, tmp_path, user_kernel=True)
        image = builder.install_disk_image(
            r, builder._make(r, tmp_path / "cache", lambda _l: None, debug,
                             machine_factory(guest, transfer, extras)),
            tmp_path / "cache", lambda _l: None)
    assert extras == [df.QEMU_EXTRA]                          # SeaBIOS's serial console
    kernel = Path(image.kernel).read_bytes()
    assert kernel != debug.read_bytes() and b".debug_info" not in kernel   # stripped
    types = types_from_json((image.dir / builder.TYPES_FILE).read_text())
    assert types.offsetof("struct vm_map_entry", "aux.master_pde") == 32
    man = image.manifest
    assert man["user_kernel"] == {"path": str(debug),
                                  "sha256": hashlib.sha256(debug.read_bytes()).hexdigest()}
    assert man["release_files"]["sha256"] == sha
    typed = guest.typed
    assert typed[0] == "mount -u -w /" and typed[3].startswith("mv /boot/kernel/kernel")
    log = (image.dir / "logs" / "firstboot-console.log").read_text()
    assert "OK set console=comconsole" in log and "RETURN for /bin/sh" in log
    # the same image, asked for with another kernel: refused, not silently reused
    other = tmp_path / "other.debug"
    other.write_bytes(debug.read_bytes() + b"\0")
    with pytest.raises(InfraError, match="was built with the kernel"):
        builder._check_cached(image, other)
    builder._check_cached(image, debug)


@pytest.mark.skipif(not TOOLS, reason="needs gcc and objcopy")
def test_the_user_kernel_is_checked(tmp_path: Path) -> None:
    (tmp_path / "k.c").write_text("int unrelated;\nint main(void) { return 0; }\n")
    subprocess.run(["gcc", "-g", "-o", str(tmp_path / "k"), str(tmp_path / "k.c")], check=True)
    with pytest.raises(InfraError, match="none of allprocs, procglob"):
        builder.user_kernel(tmp_path / "k", tmp_path)
    with pytest.raises(InfraError, match="no such file"):
        builder.user_kernel(tmp_path / "missing", tmp_path)
    good = tmp_path / "kernel.debug"
    good.write_bytes(kernel_elf(tmp_path))
    uk = builder.user_kernel(good, tmp_path)
    assert len(uk.stripped) < good.stat().st_size and json.loads(uk.types_json)["types"]


def test_no_user_kernel_and_no_mirror_are_skips_with_the_reason(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv(df.KERNEL_ENV, raising=False)
    with pytest.raises(SkipScenario, match=r"MAP_VPAGETABLE.*\$SLATCHECK_DRAGONFLY_KERNEL"):
        builder.build_dragonfly_image("dragonfly-amd64-vkernel", lambda _l: None)
    res = run_scenario(load_scenario(SMOKE), tmp_path / "art")
    assert (res.verdict, res.outcome, res.status) == ("skip", "skipped", 0), res.message
    assert "bug #3389" in res.message
    monkeypatch.setenv(df.MIRROR_ENV, closed_port())
    monkeypatch.setenv(df.KERNEL_ENV, str(tmp_path / "kernel.debug"))
    with pytest.raises(SkipScenario, match="not in the cache"):
        builder.build_dragonfly_image("dragonfly-amd64", lambda _l: None)
    res = run_scenario(load_scenario(SMOKE), tmp_path / "art2")
    assert res.verdict == "skip" and "images import dragonfly-amd64-vkernel" in res.message
    assert not list((tmp_path / "art2").glob("*/qemu.cmdline"))            # nothing booted
    res = run_scenario(load_scenario(STOCK), tmp_path / "art3")
    assert res.verdict == "skip" and "images import dragonfly-amd64 " in res.message
    assert main(["images", "build", "dragonfly-amd64"]) == 3


@pytest.mark.skipif(not (QEMU_IMG and TOOLS), reason="needs qemu-img and gcc")
def test_import_a_disk_made_elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv(df.KERNEL_ENV, raising=False)
    (tmp_path / "disk.raw").write_bytes(raw_disk())
    (tmp_path / "kernel.debug").write_bytes(kernel_elf(tmp_path))
    assert main(["images", "import", "dragonfly-amd64-vkernel", "--disk",
                 str(tmp_path / "disk.raw"), "--kernel", str(tmp_path / "kernel.debug")]) == 0
    image = builder.build_dragonfly_image("dragonfly-amd64-vkernel", lambda _l: None)
    assert Path(image.kernel).read_bytes() == (tmp_path / "kernel.debug").read_bytes()
    monkeypatch.setenv(df.KERNEL_ENV, str(tmp_path / "kernel.debug"))   # the same kernel
    assert builder.build_dragonfly_image("dragonfly-amd64-vkernel", lambda _l: None)
    (tmp_path / "k.c").write_text("int unrelated;\nint main(void) { return 0; }\n")
    subprocess.run(["gcc", "-o", str(tmp_path / "k"), str(tmp_path / "k.c")], check=True)
    assert main(["images", "import", "dragonfly-amd64", "--disk", str(tmp_path / "disk.raw"),
                 "--kernel", str(tmp_path / "k")]) == 3
    assert "none of allprocs, procglob" in capsys.readouterr().err
