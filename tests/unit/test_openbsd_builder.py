"""The openbsd-autoinstall builder offline: the skip path, fetch-and-verify from a loopback
mirror signed with a test key, what the install's HTTP server serves, QEMU accepting the
netboot arguments, and ``slatcheck images import`` of a disk installed elsewhere."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest
from ctf_writer import CtfWriter
from http_fixture import mirror
from test_fetch_signify import keypair, release

from harness.cli import main
from harness.errors import SkipScenario
from harness.images import openbsd as ob
from harness.images import openbsd_builder as builder
from harness.images.signify import VerifyError
from harness.runner import run_scenario
from harness.scenario import load_scenario

ROOT = Path(__file__).resolve().parents[2]
VMD_SMOKE = ROOT / "scenarios" / "openbsd" / "vmd-smoke.yaml"
SIGNIFY = shutil.which("signify-openbsd")
QEMU = shutil.which("qemu-system-x86_64")
TOOLS = shutil.which("cc") and shutil.which("objcopy")


def closed_port() -> str:
    """A loopback URL nothing listens on (the mirror of a machine without network)."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/pub/OpenBSD"


def test_no_image_and_no_mirror_is_a_skip_with_the_reason(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv(ob.MIRROR_ENV, closed_port())
    res = run_scenario(load_scenario(VMD_SMOKE), tmp_path / "art")
    assert res.verdict == "skip" and res.status == 0, res.message
    assert "not in the cache" in res.message and "images import openbsd-amd64" in res.message
    assert not (tmp_path / "art" / "vmd-smoke" / "qemu.cmdline").exists()   # nothing booted
    assert not (tmp_path / "art" / "vmd-smoke" / "traceback.txt").exists()
    # `images build` of the same says so and does not claim success
    assert main(["images", "build", "openbsd-amd64"]) == 3


def signed_release(tmp_path: Path, version: str) -> tuple[Path, str, str]:
    """A release directory with every file the install needs, signed with a test key."""
    d = tmp_path / "mirror" / version / ob.ARCH
    keys = d.parent / "keys"                                 # where release() looks
    keys.mkdir(parents=True)
    good, other = keypair(keys, "base"), keypair(keys, "other")
    files = {name: hashlib.sha256(name.encode()).digest() * 64
             for name in builder.needed_files(version) if name not in ("SHA256.sig", "SHA256")}
    release(d, files, "base")
    return tmp_path / "mirror", good, other


@pytest.mark.skipif(SIGNIFY is None, reason="apt-get install signify-openbsd")
def test_fetch_release_verifies_with_the_pinned_key(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    version = "9.8"
    monkeypatch.setitem(ob.BASE_KEYS, version, ob.BASE_KEYS["7.9"])
    root, good, other = signed_release(tmp_path, version)
    monkeypatch.setitem(ob.BASE_KEYS, version, good)
    with mirror(root) as m:
        digests = builder.fetch_release(version, m.url, tmp_path / "c", lambda _l: None)
        assert set(digests) == set(builder.needed_files(version)) - {"SHA256.sig", "SHA256"}
        monkeypatch.setitem(ob.BASE_KEYS, version, other)          # a wrong signature
        with pytest.raises(VerifyError, match="failed with the pinned key"):
            builder.fetch_release(version, m.url, tmp_path / "c", lambda _l: None)
    assert not (tmp_path / "c" / "bsd.rd").exists()              # unverified files deleted
    assert not (tmp_path / "c" / "SHA256.sig").exists()


def test_install_server_serves_what_the_installer_asks(tmp_path: Path) -> None:
    names = [f for f in builder.needed_files("7.9") if f != "pxeboot"]
    for n in names:
        (tmp_path / n).write_bytes(n.encode() * 3)
    routes = builder.install_routes("7.9", tmp_path, ob.InstallAnswers())
    with builder.serving(routes) as (port, log):
        def get(path: str) -> bytes:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
                return bytes(r.read())
        conf = get("/install.conf").decode()
        index = get("/pub/OpenBSD/7.9/amd64/index.txt").decode()
        assert get("/pub/OpenBSD/7.9/amd64/base79.tgz") == b"base79.tgz" * 3
        with pytest.raises(urllib.error.HTTPError):
            get("/pub/OpenBSD/7.9/amd64/xbase79.tgz")
    # the installer takes the last word of each index line as a file name
    assert sorted(line.split()[-1] for line in index.splitlines()) == sorted(names)
    assert f"HTTP Server = http://{ob.HTTP_GUEST_ADDR}\n" in conf
    assert f"Server directory = pub/OpenBSD/7.9/{ob.ARCH}" in conf
    assert sum(" 200 " in line for line in log) == 3 and any(" 404 " in x for x in log)


@pytest.mark.skipif(QEMU is None, reason="needs qemu-system-x86_64")
def test_qemu_accepts_the_netboot_arguments(tmp_path: Path) -> None:
    """QEMU itself is the oracle: it refuses a guestfwd rule on its host alias 10.0.2.2."""
    def qemu(args: list[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run([QEMU or "", "-M", "pc", "-display", "none", "-nodefaults", "-S",
                               "-monitor", "none", "-serial", "none", *args],
                              capture_output=True, text=True, timeout=20, check=False,
                              input="")
    ok = subprocess.Popen([QEMU or "", "-M", "pc", "-display", "none", "-nodefaults", "-S",
                           "-monitor", "none", "-serial", "none",
                           *ob.qemu_netboot_args(str(tmp_path), 8123)],
                          stderr=subprocess.PIPE, text=True)
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            ok.wait(timeout=3)                                 # still running: accepted
    finally:
        ok.kill()
        ok.wait()
    bad = qemu(ob.qemu_netboot_args(str(tmp_path), 8123, guest_addr="10.0.2.2"))
    assert bad.returncode != 0 and "guest forwarding rule" in bad.stderr


def kernel_elf(tmp_path: Path, symbols: list[str], with_ctf: bool = True) -> Path:
    """A small ELF with *symbols* defined and a CTF ``struct vm`` (vm_pmap design)."""
    w = CtfWriter()
    u64 = w.int_("unsigned", 8)
    w.struct("struct vm", [("vm_pmap", w.ptr(u64)), ("vm_id", u64)])
    (tmp_path / "ctf.bin").write_bytes(w.blob())
    (tmp_path / "k.c").write_text("".join(f"void *{s} = 0;\n" for s in symbols))
    subprocess.run(["cc", "-c", "-o", str(tmp_path / "k.o"), str(tmp_path / "k.c")],
                   check=True)
    out = tmp_path / "bsd"
    if with_ctf:
        subprocess.run(["objcopy", "--add-section", f".SUNW_ctf={tmp_path / 'ctf.bin'}",
                        str(tmp_path / "k.o"), str(out)], check=True)
    else:
        shutil.copy(tmp_path / "k.o", out)
    return out


@pytest.mark.skipif(not TOOLS or not shutil.which("qemu-img"),
                    reason="needs cc, objcopy and qemu-img")
def test_images_import_puts_a_disk_and_its_kernel_in_the_cache(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv(ob.MIRROR_ENV, closed_port())
    disk = tmp_path / "installed.raw"
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(disk), "16M"], check=True)
    bad = kernel_elf(tmp_path, ["vmm_softc"])                   # no allprocess
    assert main(["images", "import", "openbsd-amd64", "--disk", str(disk),
                 "--kernel", str(bad)]) == 3
    assert "allprocess" in capsys.readouterr().err
    kdir = tmp_path / "k2"
    kdir.mkdir()
    nocf = kernel_elf(kdir, ["vmm_softc", "allprocess"], with_ctf=False)
    assert main(["images", "import", "openbsd-amd64", "--disk", str(disk),
                 "--kernel", str(nocf)]) == 3
    assert ".SUNW_ctf" in capsys.readouterr().err
    kdir = tmp_path / "k3"
    kdir.mkdir()
    good = kernel_elf(kdir, ["vmm_softc", "allprocess"])
    assert main(["images", "import", "openbsd-amd64", "--disk", str(disk), "--kernel",
                 str(good), "--root-password", "s3cret"]) == 0
    image = builder.build_openbsd_image("openbsd-amd64", progress=lambda _l: None)
    assert image.disk is not None and image.os == "openbsd"
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(image.disk)],
                                     capture_output=True, text=True, check=True).stdout)
    assert info["format"] == "qcow2" and info["virtual-size"] == 16 << 20
    assert image.kernel.read_bytes() == good.read_bytes()
    assert image.manifest["login"] == {"user": "root", "password": "s3cret"}
    assert image.manifest["files"]["kernel"] == hashlib.sha256(good.read_bytes()).hexdigest()
    # the linux image cannot be imported: it is not a disk
    assert main(["images", "import", "linux-amd64", "--disk", str(disk),
                 "--kernel", str(good)]) == 2


def test_unreachable_mirror_is_remembered(monkeypatch: pytest.MonkeyPatch) -> None:
    url = closed_port()
    with pytest.raises(SkipScenario):
        builder._probe(f"{url}/7.9/amd64/SHA256.sig")
    with pytest.raises(SkipScenario, match="cannot be reached"):
        builder._probe(f"{url}/7.9/amd64/SHA256.sig")
