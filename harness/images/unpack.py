"""Decompress a downloaded disk image (``.xz``, ``.bz2``) into a sparse raw file.

Release disk images are mostly zeros (FreeBSD's BASIC-CI raw image is 5 GiB
for a few hundred MiB of data), so blocks of zeros are skipped with a seek
instead of written: the raw file stays sparse, and ``qemu-img convert`` to
qcow2 keeps only the data.  The output goes to ``<dst>.part`` and is renamed
when complete; a truncated or corrupt archive is an :class:`UnpackError` and
leaves no output.

>>> sorted(DECOMPRESSORS)
['.bz2', '.xz']
"""

from __future__ import annotations

import bz2
import lzma
import os
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from harness.errors import InfraError

__all__ = ["DECOMPRESSORS", "UnpackError", "decompress", "BLOCK"]

BLOCK = 1 << 20                     # bytes per read; a block of zeros becomes a hole
PROGRESS_STEP = 256 << 20           # report every 256 MiB of output
DECOMPRESSORS: dict[str, Callable[[Path], IO[bytes]]] = {
    ".xz": lambda p: lzma.open(p, "rb"),
    ".bz2": lambda p: bz2.open(p, "rb"),
}


class UnpackError(InfraError):
    """A compressed image could not be decompressed (truncated, corrupt, unknown kind)."""


def decompress(src: Path, dst: Path, progress: Callable[[str], None] | None = None) -> int:
    """Decompress *src* (by its suffix) into the sparse file *dst*; the bytes written.

    >>> decompress(Path("FreeBSD-14.3-RELEASE-amd64-BASIC-CI.raw.xz"),
    ...            Path("base.raw"))                                    # doctest: +SKIP
    5369246208
    """
    opener = DECOMPRESSORS.get(src.suffix)
    if opener is None:
        raise UnpackError(f"{src.name}: no decompressor for {src.suffix!r} "
                          f"(known: {', '.join(sorted(DECOMPRESSORS))})")
    part = dst.with_name(dst.name + ".part")
    try:
        with opener(src) as fin, open(part, "wb") as fout:
            size = _copy_sparse(fin, fout, src.name, progress or (lambda _m: None))
    except (OSError, EOFError, lzma.LZMAError, ValueError) as exc:
        part.unlink(missing_ok=True)
        raise UnpackError(f"cannot decompress {src.name}: {exc}") from exc
    os.replace(part, dst)
    return size


def _copy_sparse(fin: IO[bytes], fout: Any, name: str,
                 progress: Callable[[str], None]) -> int:
    """Copy block by block, seeking over blocks of zeros; the total size."""
    done, last = 0, 0
    while block := fin.read(BLOCK):
        if block.count(0) == len(block):
            fout.seek(len(block), os.SEEK_CUR)
        else:
            fout.write(block)
        done += len(block)
        if done - last >= PROGRESS_STEP:
            progress(f"{name}: {done >> 20} MiB decompressed")
            last = done
    fout.truncate(done)                # a trailing hole still counts in the size
    progress(f"{name}: {done >> 20} MiB decompressed")
    return done
