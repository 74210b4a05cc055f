"""Download with resume from a loopback mirror, then signify verification with a test key.

The key pair is generated at test time with ``signify-openbsd -G``; the fixture
release directory is signed the way OpenBSD signs its releases (``-S -e``: the
SHA256 list embedded in SHA256.sig).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from http_fixture import mirror

from harness.images.fetch import FetchError, fetch
from harness.images.signify import (
    VerifyError,
    check_pubkey,
    parse_sha256_list,
    verify_release,
)

SIGNIFY = shutil.which("signify-openbsd")


def keypair(d: Path, name: str) -> str:
    """A fresh signify key pair in *d*; returns the public key's base64 line."""
    subprocess.run([SIGNIFY, "-G", "-n", "-c", f"slatcheck test key {name}",
                    "-p", str(d / f"{name}.pub"), "-s", str(d / f"{name}.sec")],
                   check=True, capture_output=True)
    return (d / f"{name}.pub").read_text().splitlines()[1]


def release(d: Path, files: dict[str, bytes], key: str, listed: list[str] | None = None) -> None:
    """Write *files* and their SHA256 list (only *listed*), signed with *key* (embedded)."""
    d.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (d / name).write_bytes(data)
    names = listed if listed is not None else sorted(files)
    text = "".join(f"SHA256 ({n}) = {hashlib.sha256(files[n]).hexdigest()}\n" for n in names)
    (d / "SHA256").write_text(text)
    subprocess.run([SIGNIFY, "-S", "-e", "-s", str(d.parent / "keys" / f"{key}.sec"),
                    "-m", str(d / "SHA256"), "-x", str(d / "SHA256.sig")],
                   check=True, capture_output=True)


FILES = {"bsd.rd": os.urandom(300_000), "pxeboot": os.urandom(70_000),
         "base79.tgz": os.urandom(1_500_000)}


@pytest.fixture
def signed(tmp_path: Path) -> tuple[Path, str, str]:
    """A signed release directory; (dir, good key, other key)."""
    if SIGNIFY is None:
        pytest.skip("apt-get install signify-openbsd")
    keys = tmp_path / "keys"
    keys.mkdir()
    good, other = keypair(keys, "base"), keypair(keys, "other")
    release(tmp_path / "mirror", FILES, "base")
    return tmp_path / "mirror", good, other


def test_fetch_then_verify(signed: tuple[Path, str, str], tmp_path: Path) -> None:
    root, key, _other = signed
    cache = tmp_path / "cache"
    lines: list[str] = []
    with mirror(root) as m:
        for name in ("SHA256.sig", "bsd.rd", "pxeboot", "base79.tgz"):
            got = fetch(f"{m.url}/{name}", cache, progress=lines.append)
            assert not got.cached and got.size == (root / name).stat().st_size
        again = fetch(f"{m.url}/bsd.rd", cache)
    assert again.cached and len(m.requests) == 4                  # the cache was used
    assert any("base79.tgz: 1.0 / 1.4 MiB" in line for line in lines)
    assert any(line.endswith("(100%)") for line in lines)
    digests = verify_release(cache, ["bsd.rd", "pxeboot", "base79.tgz"], key)
    assert digests["bsd.rd"] == hashlib.sha256(FILES["bsd.rd"]).hexdigest()


def test_interrupted_download_resumes_with_range(tmp_path: Path) -> None:
    root = tmp_path / "mirror"
    root.mkdir()
    (root / "base79.tgz").write_bytes(FILES["base79.tgz"])
    cache = tmp_path / "cache"
    with mirror(root) as m:
        m.cut["base79.tgz"] = 400_000
        with pytest.raises(FetchError, match=r"400000 bytes kept.*run again to resume"):
            fetch(f"{m.url}/base79.tgz", cache, retries=0)
        assert (cache / "base79.tgz.part").stat().st_size == 400_000
        assert not (cache / "base79.tgz").exists()
        got = fetch(f"{m.url}/base79.tgz", cache, retries=0)
    assert got.resumed_from == 400_000 and not got.cached
    assert m.requests == [("base79.tgz", None), ("base79.tgz", "bytes=400000-")]
    assert (cache / "base79.tgz").read_bytes() == FILES["base79.tgz"]
    assert not (cache / "base79.tgz.part").exists()


def test_retries_resume_within_one_call_and_servers_without_range(tmp_path: Path) -> None:
    root = tmp_path / "mirror"
    root.mkdir()
    (root / "bsd.rd").write_bytes(FILES["bsd.rd"])
    with mirror(root) as m:
        m.cut["bsd.rd"] = 1000
        got = fetch(f"{m.url}/bsd.rd", tmp_path / "a", retries=1)
        assert got.size == len(FILES["bsd.rd"]) and m.requests[-1][1] == "bytes=1000-"
        m.no_range = True                     # a server that ignores Range: start over
        m.cut["bsd.rd"] = 5000
        with pytest.raises(FetchError):
            fetch(f"{m.url}/bsd.rd", tmp_path / "b", retries=0)
        fetch(f"{m.url}/bsd.rd", tmp_path / "b", retries=0)
        with pytest.raises(FetchError, match="HTTP 404"):
            fetch(f"{m.url}/nope", tmp_path / "b", retries=0)
    assert (tmp_path / "a" / "bsd.rd").read_bytes() == FILES["bsd.rd"]
    assert (tmp_path / "b" / "bsd.rd").read_bytes() == FILES["bsd.rd"]


def test_missing_signature_is_refused(signed: tuple[Path, str, str]) -> None:
    root, key, _other = signed
    (root / "SHA256.sig").unlink()
    with pytest.raises(VerifyError, match="SHA256.sig is missing"):
        verify_release(root, ["bsd.rd"], key)


def test_signature_by_another_key_is_refused(signed: tuple[Path, str, str]) -> None:
    root, _key, other = signed
    with pytest.raises(VerifyError, match="signature check .* failed with the pinned key"):
        verify_release(root, ["bsd.rd"], other)


def test_altered_signed_list_is_refused(signed: tuple[Path, str, str]) -> None:
    root, key, _other = signed
    sig = (root / "SHA256.sig").read_text()
    evil = hashlib.sha256(b"evil").hexdigest()
    good = hashlib.sha256(FILES["bsd.rd"]).hexdigest()
    (root / "SHA256.sig").write_text(sig.replace(good, evil))
    with pytest.raises(VerifyError, match="signature check"):
        verify_release(root, ["bsd.rd"], key)


def test_wrong_digest_unlisted_file_and_mismatched_list(signed: tuple[Path, str, str],
                                                        tmp_path: Path) -> None:
    root, key, _other = signed
    (root / "pxeboot").write_bytes(b"tampered")
    with pytest.raises(VerifyError, match="pxeboot: SHA-256 .* differs from the signed"):
        verify_release(root, ["bsd.rd", "pxeboot"], key)
    assert list(verify_release(root, ["bsd.rd"], key)) == ["bsd.rd"]
    (root / "auto_install").write_bytes(b"x")
    with pytest.raises(VerifyError, match="auto_install is not listed"):
        verify_release(root, ["auto_install"], key)
    (root / "SHA256").write_text("SHA256 (bsd.rd) = " + "0" * 64 + "\n")
    with pytest.raises(VerifyError, match="differs from the list signed"):
        verify_release(root, ["bsd.rd"], key)
    # a file the signed list names but the mirror did not serve
    part = tmp_path / "partial"
    release(part, {"bsd.rd": b"a", "bsd": b"b"}, "base")
    (part / "bsd").unlink()
    with pytest.raises(VerifyError, match="bsd is missing"):
        verify_release(part, ["bsd"], key)


def test_key_and_list_formats() -> None:
    with pytest.raises(VerifyError, match="not base64"):
        check_pubkey("not a key!")
    with pytest.raises(VerifyError, match="not an Ed25519 signify key"):
        check_pubkey("AAAA")
    assert check_pubkey(" RWTSdNN9A3yvWNn7mUjXwv9DOCOUnyfuV+mq1iGPIfD+NhN8EYnEQ1at\n") \
        .startswith("RWTS")
    with pytest.raises(VerifyError, match="line 2"):
        parse_sha256_list("SHA256 (a) = " + "0" * 64 + "\nMD5 (a) = 00\n")
    with pytest.raises(VerifyError, match="twice"):
        parse_sha256_list(("SHA256 (a) = " + "0" * 64 + "\n") * 2)
    with pytest.raises(VerifyError, match="not 'SHA256"):
        parse_sha256_list("SHA256 (../etc/passwd) = " + "0" * 64)

