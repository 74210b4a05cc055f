"""Fetch Debian packages with the host's apt, for the host's or a foreign architecture.

A foreign architecture (arm64 on an amd64 host) is handled without touching
dpkg's configuration: apt gets its own architecture, lists and cache directories
(``-oAPT::Architecture=arm64 -oDir::State::Lists=... -oDir::Cache=...``) and an
``apt-get update`` of its own.
"""

from __future__ import annotations

import fcntl
import hashlib
import re
import time
from dataclasses import dataclass
from pathlib import Path

from harness.errors import InfraError
from harness.images.host import require_tool, run_tool
from harness.images.recipe import DEBIAN_MIRROR, KernelSpec

_MAX_AGE = 24 * 3600     # seconds before private apt lists are refreshed
DEBIAN_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"

__all__ = ["Package", "AptContext", "host_architecture", "parse_depends", "sha256_file",
           "suite_options"]


@dataclass(frozen=True)
class Package:
    """A downloaded ``.deb``: what the manifest records about it."""

    name: str
    version: str
    architecture: str
    filename: str
    sha256: str
    path: Path

    def manifest(self) -> dict[str, str]:
        """The manifest record (everything but the local path)."""
        return {"name": self.name, "version": self.version,
                "architecture": self.architecture, "filename": self.filename,
                "sha256": self.sha256}


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def host_architecture() -> str:
    """dpkg's architecture of this host (``dpkg --print-architecture``)."""
    return run_tool(["dpkg", "--print-architecture"]).strip()


def parse_depends(show_output: str) -> list[str]:
    """Package names of the first ``Depends:`` field of ``apt-cache show`` output.

    >>> parse_depends("Package: x\\nDepends: linux-image-6.1.0-9-amd64 (= 6.1.1-1), a | b\\n")
    ['linux-image-6.1.0-9-amd64', 'a']
    """
    match = re.search(r"^Depends:\s*(.*)$", show_output, re.MULTILINE)
    if match is None:
        return []
    names = []
    for clause in match.group(1).split(","):
        first = clause.split("|")[0].strip()
        names.append(re.split(r"[\s(:]", first, maxsplit=1)[0])
    return [name for name in names if name]


def suite_options(state_dir: Path, suite: str, mirror: str) -> list[str]:
    """apt options that take packages from *suite* of *mirror* only (its own sources
    list in *state_dir*, none of the host's), preferred as ``apt-get -t SUITE`` would.

    >>> import tempfile; d = Path(tempfile.mkdtemp())
    >>> suite_options(d, "bookworm-backports", "http://deb.debian.org/debian")[1]
    '-oAPT::Default-Release=bookworm-backports'
    >>> (d / "sources.list").read_text().split()[-3:]
    ['http://deb.debian.org/debian', 'bookworm-backports', 'main']
    """
    listing = state_dir / "sources.list"
    listing.write_text(f"deb [signed-by={DEBIAN_KEYRING}] {mirror} {suite} main\n")
    parts = state_dir / "sources.list.d"
    parts.mkdir(exist_ok=True)
    return [f"-oDir::Etc::SourceList={listing}", f"-oAPT::Default-Release={suite}",
            f"-oDir::Etc::SourceParts={parts}"]


class AptContext:
    """apt-get/apt-cache for one Debian architecture, with private state if foreign."""

    def __init__(self, architecture: str, state_dir: Path, suite: str | None = None,
                 mirror: str = DEBIAN_MIRROR) -> None:
        require_tool("apt-cache")
        self.architecture = architecture
        self.options: list[str] = []
        self._lists: Path | None = None
        if suite is not None or architecture != host_architecture():
            lists, cache = state_dir / "lists", state_dir / "cache"
            for d in (lists / "partial", cache / "archives" / "partial"):
                d.mkdir(parents=True, exist_ok=True)
            self.options = [f"-oAPT::Architecture={architecture}",
                            f"-oAPT::Architectures={architecture}",
                            f"-oDir::State::Lists={lists}", f"-oDir::Cache={cache}"]
            if suite is not None:
                self.options += suite_options(state_dir, suite, mirror)
            self._lists = lists
            self._update(only_if_fresh=True)

    def _update(self, only_if_fresh: bool) -> None:
        """``apt-get update`` of the private lists (serialised between builders).

        With *only_if_fresh*, lists younger than a day are kept, so the metapackage
        does not resolve to a kernel build the mirror has already dropped.
        """
        assert self._lists is not None
        with (self._lists.parent / "update.lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            lists = list(self._lists.glob("*_Packages*"))
            fresh = lists and time.time() - min(p.stat().st_mtime for p in lists) < _MAX_AGE
            if not (only_if_fresh and fresh):
                run_tool(["apt-get", *self.options, "update"])

    def show(self, package: str) -> str | None:
        """``apt-cache show`` of the candidate version, or None if apt does not know it."""
        try:
            return run_tool(["apt-cache", *self.options, "show", "--no-all-versions",
                             package])
        except InfraError:
            return None

    def resolve_kernel(self, spec: KernelSpec) -> str:
        """The kernel package to fetch, as ``name`` or ``name=version`` (pinned)."""
        if spec.package:
            return f"{spec.package}={spec.version}" if spec.version else spec.package
        if spec.metapackage is None:
            raise InfraError("the recipe's kernel names no package: metapackage or package")
        shown = self.show(spec.metapackage)
        if shown is None:
            raise InfraError(f"apt knows no package {spec.metapackage!r} for "
                             f"{self.architecture}; run apt-get update")
        images = [n for n in parse_depends(shown) if n.startswith("linux-image-")]
        if not images:
            raise InfraError(f"{spec.metapackage} depends on no linux-image-* package")
        unsigned = f"{images[0]}-unsigned"
        if spec.prefer_unsigned and self.show(unsigned) is not None:
            return unsigned
        return images[0]

    def download(self, what: str, dest: Path) -> Package:
        """``apt-get download`` one package into *dest*; returns its record."""
        before = set(dest.glob("*.deb"))
        argv = ["apt-get", *self.options, "-oAPT::Sandbox::User=root", "download", what]
        try:
            run_tool(argv, cwd=dest)
        except InfraError:
            if self._lists is None:
                raise
            self._update(only_if_fresh=False)   # private lists may be older than the mirror
            run_tool(argv, cwd=dest)
        new = sorted(set(dest.glob("*.deb")) - before)
        if len(new) != 1:
            raise InfraError(f"apt-get download {what} produced {len(new)} files")
        fields = run_tool(["dpkg-deb", "-f", str(new[0]), "Package", "Version",
                           "Architecture"])
        info = dict(line.split(": ", 1) for line in fields.strip().splitlines())
        return Package(info["Package"], info["Version"], info["Architecture"],
                       new[0].name, sha256_file(new[0]), new[0])
