"""Verify an OpenBSD release directory: ``SHA256.sig`` with signify, then each file's digest.

OpenBSD signs each release directory's ``SHA256`` list with the release's base
key; ``SHA256.sig`` embeds the list (``signify -S -e``).  Verification here is
the installer's (``distrib/miniroot/install.sub`` ``install_files``):

1. ``signify-openbsd -V -e -p <pinned key> -x SHA256.sig -m <out>`` checks the
   signature and writes the *signed* list (Debian's ``signify-openbsd``);
2. a separately downloaded ``SHA256``, when present, must equal the signed list;
3. every file used must be listed there and its SHA-256 must match.

Anything else is refused with :class:`VerifyError`: a missing ``SHA256.sig``,
a bad signature (wrong key or altered list), a file not listed, a digest that
differs.  The key is pinned by the caller (one base64 line from openbsd/src
``etc/signify/openbsd-NN-base.pub``), never taken from the mirror.

>>> parse_sha256_list("SHA256 (bsd.rd) = " + "ab" * 32 + "\\n")
{'bsd.rd': 'abababababababababababababababababababababababababababababababab'}
"""

from __future__ import annotations

import base64
import hashlib
import re
import subprocess
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

from harness.errors import InfraError
from harness.images.host import require_tool

__all__ = ["SIGNIFY", "SIGNIFY_PACKAGE", "VerifyError", "verify_release", "signed_list",
           "parse_sha256_list", "sha256_file", "check_pubkey"]

SIGNIFY = "signify-openbsd"
SIGNIFY_PACKAGE = "signify-openbsd"
SHA256_LINE = re.compile(r"SHA256 \((?P<name>[^()/]+)\) = (?P<hex>[0-9a-f]{64})")
KEY_BYTES = 42          # "Ed" + 8-byte key number + 32-byte Ed25519 public key


class VerifyError(InfraError):
    """A release file could not be verified; it must not be used."""


def check_pubkey(key: str) -> str:
    """*key* as one base64 line of a signify Ed25519 public key, or VerifyError."""
    line = key.strip()
    try:
        raw = base64.b64decode(line, validate=True)
    except ValueError as exc:
        raise VerifyError(f"pinned signify key {line!r} is not base64") from exc
    if len(raw) != KEY_BYTES or raw[:2] != b"Ed":
        raise VerifyError(f"pinned signify key {line!r} is not an Ed25519 signify key")
    return line


def parse_sha256_list(text: str) -> dict[str, str]:
    """``name -> hex digest`` from ``SHA256 (name) = hex`` lines; other lines refused."""
    out: dict[str, str] = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        m = SHA256_LINE.fullmatch(line.strip())
        if not m:
            raise VerifyError(f"SHA256 line {n} is not 'SHA256 (name) = digest': {line!r}")
        if m.group("name") in out:
            raise VerifyError(f"SHA256 lists {m.group('name')} twice")
        out[m.group("name")] = m.group("hex")
    return out


def sha256_file(path: Path) -> str:
    """The hex SHA-256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def signed_list(sig: Path, pubkey: str, comment: str = "pinned base public key") -> str:
    """The list embedded in *sig*, after signify verified it with *pubkey*."""
    if not sig.is_file():
        raise VerifyError(f"{sig.name} is missing: refusing unverified files in {sig.parent}")
    exe = require_tool(SIGNIFY, (SIGNIFY_PACKAGE,))
    line = check_pubkey(pubkey)
    with tempfile.TemporaryDirectory(prefix="slat-signify-") as tmp:
        key = Path(tmp) / "base.pub"
        key.write_text(f"untrusted comment: {comment}\n{line}\n")
        out = Path(tmp) / "SHA256"
        proc = subprocess.run([exe, "-V", "-e", "-p", str(key), "-x", str(sig), "-m", str(out)],
                              capture_output=True, text=True, timeout=60, check=False)
        if proc.returncode != 0 or not out.exists():
            why = (proc.stderr or proc.stdout).strip() or f"status {proc.returncode}"
            raise VerifyError(f"signature check of {sig} failed with the pinned key: {why}")
        return out.read_text()


def verify_release(directory: Path, files: Iterable[str], pubkey: str, *,
                   sig_name: str = "SHA256.sig", list_name: str = "SHA256") -> Mapping[str, str]:
    """Verify *files* in *directory* against its signed ``SHA256``; name -> digest.

    Raises VerifyError naming the first file that fails.
    """
    signed = signed_list(directory / sig_name, pubkey)
    digests = parse_sha256_list(signed)
    plain = directory / list_name
    if plain.exists() and plain.read_text() != signed:
        raise VerifyError(f"{plain} differs from the list signed in {sig_name}")
    out = {}
    for name in files:
        if name not in digests:
            raise VerifyError(f"{name} is not listed in the signed {list_name}: refusing it")
        path = directory / name
        if not path.is_file():
            raise VerifyError(f"{name} is missing from {directory}")
        got = sha256_file(path)
        if got != digests[name]:
            raise VerifyError(f"{name}: SHA-256 {got} differs from the signed {digests[name]}")
        out[name] = got
    return out
