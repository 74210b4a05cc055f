"""Download a file into a cache directory, with progress and resume (HTTP Range).

A download goes to ``<dest>/<name>.part`` and is renamed to ``<dest>/<name>``
only when complete.  A ``.part`` left by an interrupted run is resumed with
``Range: bytes=<size>-``; a server that answers 200 instead of 206 (no range
support) restarts it from zero.  A file already in the cache is not fetched
again: callers verify it (:mod:`harness.images.signify`) and delete it when
verification fails.  Concurrent fetches of one name serialise on a lock file.

Nothing here trusts what it downloads: integrity is the signature's job.

>>> fetch("https://cdn.openbsd.org/pub/OpenBSD/7.9/amd64/bsd.rd", cache)  # doctest: +SKIP
Fetched(path=.../bsd.rd, size=4848172, resumed_from=0, cached=False)
"""

from __future__ import annotations

import fcntl
import os
import re
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from harness.errors import InfraError

__all__ = ["fetch", "Fetched", "FetchError", "parse_content_range"]

CHUNK = 1 << 16
PROGRESS_STEP = 1 << 20        # report at most once per MiB
CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


class FetchError(InfraError):
    """A download failed; a partial file may be left to resume."""


@dataclass(frozen=True)
class Fetched:
    """A file in the cache: where, how big, and how it got there."""

    path: Path
    size: int
    resumed_from: int     # bytes already there when this download resumed (0: from scratch)
    cached: bool          # already complete in the cache, nothing downloaded


def parse_content_range(value: str) -> tuple[int, int, int | None]:
    """(first, last, total) of a ``Content-Range: bytes a-b/n`` header.

    >>> parse_content_range("bytes 100-199/1000")
    (100, 199, 1000)
    """
    m = CONTENT_RANGE.fullmatch(value.strip())
    if not m:
        raise FetchError(f"unreadable Content-Range {value!r}")
    total = None if m.group(3) == "*" else int(m.group(3))
    return int(m.group(1)), int(m.group(2)), total


@contextmanager
def _locked(lock: Path) -> Iterator[None]:
    """Hold an exclusive lock on *lock* (created if needed)."""
    with open(lock, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def fetch(url: str, dest: Path, *, name: str | None = None,
          progress: Callable[[str], None] | None = None, retries: int = 2,
          timeout: float = 60.0) -> Fetched:
    """Download *url* into directory *dest* (as *name*, default the URL's last part).

    Interrupted transfers are resumed up to *retries* times in this call; if it
    still fails, the ``.part`` file stays for the next call and FetchError
    says how far it got.
    """
    name = name or url.rstrip("/").rsplit("/", 1)[-1]
    if not name or "/" in name or name in (".", ".."):
        raise FetchError(f"cannot name a cache file after {url!r}")
    dest.mkdir(parents=True, exist_ok=True)
    final, part = dest / name, dest / f"{name}.part"
    with _locked(dest / f".{name}.lock"):
        if final.exists():
            return Fetched(final, final.stat().st_size, 0, True)
        start = part.stat().st_size if part.exists() else 0
        for attempt in range(retries + 1):
            try:
                size = _download(url, part, progress or (lambda _m: None), timeout)
                break
            except (OSError, urllib.error.URLError, FetchError) as exc:
                have = part.stat().st_size if part.exists() else 0
                if attempt == retries:
                    raise FetchError(f"download of {url} failed after {attempt + 1} "
                                     f"attempt(s) with {have} bytes kept in {part} "
                                     f"(run again to resume): {exc}") from exc
        os.replace(part, final)
        return Fetched(final, size, start, False)


def _download(url: str, part: Path, progress: Callable[[str], None], timeout: float) -> int:
    """One request: resume *part* if it has bytes; returns the final size."""
    have = part.stat().st_size if part.exists() else 0
    req = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:          # the range is past the end: start over
            part.unlink()
            return _download(url, part, progress, timeout)
        raise FetchError(f"{url}: HTTP {exc.code} {exc.reason}") from exc
    with resp:
        total, mode = _plan(resp.status, resp.headers.get("Content-Range"),
                            resp.headers.get("Content-Length"), have, url)
        with open(part, mode) as out:
            return _copy(resp, out, 0 if mode == "wb" else have, total, part.name[:-5],
                         progress)


def _plan(status: int, content_range: str | None, length: str | None, have: int,
          url: str) -> tuple[int | None, str]:
    """The expected total size and the file mode ("ab" resume, "wb" restart)."""
    if status == 206:
        if content_range is None:
            raise FetchError(f"{url}: 206 without Content-Range")
        first, _last, total = parse_content_range(content_range)
        if first != have:
            raise FetchError(f"{url}: asked for bytes from {have}, got from {first}")
        return total, "ab"
    if status == 200:
        return (int(length) if length is not None else None), "wb"
    raise FetchError(f"{url}: unexpected HTTP status {status}")


def _copy(resp: IO[bytes] | Any, out: IO[Any], done: int, total: int | None, name: str,
          progress: Callable[[str], None]) -> int:
    """Stream *resp* into *out*, reporting progress; a short body raises."""
    last = done
    while True:
        chunk = resp.read(CHUNK)
        if not chunk:
            break
        out.write(chunk)
        done += len(chunk)
        if done - last >= PROGRESS_STEP:
            progress(_progress_line(name, done, total))
            last = done
    out.flush()
    if total is not None and done != total:
        raise FetchError(f"{name}: connection closed at {done} of {total} bytes")
    progress(_progress_line(name, done, total))
    return done


def _progress_line(name: str, done: int, total: int | None) -> str:
    """``bsd.rd: 1.0 / 4.6 MiB (21%)``."""
    if total:
        return f"{name}: {done / 2**20:.1f} / {total / 2**20:.1f} MiB ({100 * done // total}%)"
    return f"{name}: {done / 2**20:.1f} MiB"
