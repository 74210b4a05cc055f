"""The OpenBSD image's data and pure functions: release pin, files, TFTP root, answers,
QEMU netboot arguments, the guestfwd relay, first boot and the transfer disk."""

from __future__ import annotations

import base64
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from http_fixture import mirror

from harness.errors import InfraError
from harness.images import openbsd as ob
from harness.images.signify import check_pubkey


def test_pinned_release_and_keys() -> None:
    rel = ob.release()
    assert (rel.version, rel.short) == (ob.RELEASE, ob.RELEASE.replace(".", ""))
    for version, key in ob.BASE_KEYS.items():
        check_pubkey(key)                                   # 42 bytes, "Ed"
        assert base64.b64decode(key)[:2] == b"Ed", version
    assert len(set(ob.BASE_KEYS.values())) == len(ob.BASE_KEYS)   # one key per release
    with pytest.raises(InfraError, match=r"no base public key pinned for OpenBSD 6.9.*7.9"):
        ob.release("6.9")


def test_mirror_and_files(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ob.MIRROR_ENV, raising=False)
    assert ob.mirror_url("7.9") == "https://cdn.openbsd.org/pub/OpenBSD/7.9/amd64"
    monkeypatch.setenv(ob.MIRROR_ENV, "http://127.0.0.1:1/mirror/")
    assert ob.mirror_url("8.0") == "http://127.0.0.1:1/mirror/8.0/amd64"
    files = ob.release_files("7.9")
    assert files[:2] == ["SHA256.sig", "SHA256"]
    assert {"pxeboot", "bsd.rd", "bsd", "base79.tgz", "comp79.tgz", "BUILDINFO"} <= set(files)
    assert not any(f.startswith(("x", "game")) for f in files)
    assert "base80.tgz" in ob.release_files("8.0")


def test_tftp_root_netboots_autoinstall() -> None:
    root = ob.tftp_root(random_seed=b"\0" * 512)
    assert root["auto_install"] == "pxeboot" and root["bsd.rd"] == "bsd.rd"
    boot_conf = root["etc/boot.conf"]
    assert isinstance(boot_conf, bytes)
    assert boot_conf.decode().splitlines() == ["set tty com0", "boot /bsd.rd"]
    assert len(ob.tftp_root()["etc/random.seed"]) == 512


def test_install_conf_answers_the_questions_the_driver_expects() -> None:
    from harness.images.openbsd_install import INSTALL_PROMPTS
    conf = ob.install_conf(ob.InstallAnswers(hostname="l1", interface="em0"))
    keys = [line.split(" = ", 1)[0] for line in conf.splitlines()]
    assert all(" = " in line for line in conf.splitlines())
    by_name = {p.name: p for p in INSTALL_PROMPTS}
    # every key is the start of a question the installer asks (what _autorespond matches)
    questions = {"hostname": "System hostname? (short form, e.g. 'foo')",
                 "partitioning": "Use (W)hole disk MBR, whole disk (G)PT or (E)dit?",
                 "set_names": "Set name(s)? (or 'abort' or 'done')",
                 "disklabel_template": "URL to autopartitioning template for disklabel?"}
    for name, question in questions.items():
        assert by_name[name].regex.search(question)
        assert any(question.lower().startswith(k.lower()) for k in keys), name
    assert "URL to autopartitioning template for disklabel = http://10.0.2.100/disklabel" \
        in conf
    assert "Server directory = pub/OpenBSD/7.9/amd64" in conf
    assert "HTTP Server = http://10.0.2.100\n" in conf          # http://: no https attempt
    assert ob.DISKLABEL_TEMPLATE.splitlines()[0].split("\t")[0] == "/"


def test_qemu_netboot_args() -> None:
    args = ob.qemu_netboot_args("/tmp/a,b", 8123)
    netdev = args[1]
    assert args[0] == "-netdev" and args[2:] == ["-device", "e1000,netdev=net0", "-boot",
                                                 "order=nc"]
    assert "tftp=/tmp/a,,b," in netdev and "bootfile=auto_install" in netdev
    assert netdev.endswith("guestfwd=tcp:10.0.2.100:80-cmd:python3 -m harness.images.tcprelay "
                           "127.0.0.1 8123")


def test_tcprelay_reaches_the_loopback_server(tmp_path: Path) -> None:
    (tmp_path / "install.conf").write_text(ob.install_conf())
    with mirror(tmp_path) as m:
        port = m.url.rsplit(":", 1)[1]
        proc = subprocess.run([sys.executable, "-m", "harness.images.tcprelay", "127.0.0.1",
                               port], input=b"GET /install.conf HTTP/1.0\r\n\r\n",
                              capture_output=True, timeout=30, check=True)
    head, _sep, body = proc.stdout.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200") and body.decode() == ob.install_conf()
    bad = subprocess.run([sys.executable, "-m", "harness.images.tcprelay", "x"],
                         capture_output=True, timeout=30)
    assert bad.returncode == 2


def test_firstboot_commands() -> None:
    cmds = ob.firstboot_commands()
    assert cmds[:2] == ["rcctl enable vmd", "rcctl start vmd"]
    build = next(c for c in cmds if " cc " in c)
    assert "hv_openbsd.c" in build and "main.c" in build
    assert cmds.index(build) > cmds.index(next(c for c in cmds if "tar -xf" in c))
    assert cmds[-2:] == [f"cd / && tar -cf {ob.TRANSFER_DEV} bsd", "sync"]
    # KARL is waited for, then turned off, before the kernel is copied out
    karl = cmds.index(ob.KARL_OFF)
    assert "reorder_kernel" in cmds[karl - 1] and karl < cmds.index("sha256 /bsd")


def test_transfer_disk_round_trip(tmp_path: Path) -> None:
    files = {"main.c": b"int main;\n", "workload.h": b"#pragma once\n"}
    raw = ob.pack_transfer_disk(files, 1 << 20)
    assert len(raw) == 1 << 20
    assert ob.unpack_transfer_disk(raw) == files
    (tmp_path / "disk.raw").write_bytes(raw)             # what tar -xf /dev/rsd1c reads
    with tarfile.open(tmp_path / "disk.raw") as tar:
        assert sorted(tar.getnames()) == ["main.c", "workload.h"]
    with pytest.raises(InfraError, match="too small"):
        ob.pack_transfer_disk(files, 1024)
    with pytest.raises(InfraError, match="refusing tar member"):
        ob.pack_transfer_disk({"../etc/passwd": b""}, 1 << 20)
    with pytest.raises(InfraError, match="no readable tar"):
        ob.unpack_transfer_disk(b"\x01" * 4096)
