"""Getting ``vmlinux`` and its ``.BTF`` section out of a distribution kernel.

A bzImage (``vmlinuz``) carries the kernel as one compressed payload after the
real-mode setup code.  :func:`extract_vmlinux` finds it by scanning for the
compression magics the kernel's ``scripts/extract-vmlinux`` also tries, and
stops at the first payload that decompresses to an ELF file.  gzip, xz, lzma
and bzip2 use the standard library (Debian 12's 6.1 kernels are xz:
``CONFIG_KERNEL_XZ=y``); zstd goes through the ``zstd`` command-line tool,
since Python 3.11 has no zstd module.

>>> import gzip; elf = b"\\x7fELF" + bytes(60)
>>> extract_vmlinux(b"MZ" + bytes(100) + gzip.compress(elf)) == elf
True
"""

from __future__ import annotations

import bz2
import lzma
import shutil
import subprocess
import zlib
from collections.abc import Callable, Iterator

from harness.errors import InfraError

__all__ = ["extract_vmlinux", "btf_section", "ELF_MAGIC", "PAYLOAD_MAGICS"]

ELF_MAGIC = b"\x7fELF"
ZSTD_TIMEOUT_S = 120


def _gunzip(data: bytes) -> bytes:
    """Decompress one gzip member, ignoring whatever follows it."""
    return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data)


def _unxz(data: bytes) -> bytes:
    """Decompress one xz stream, ignoring trailing data."""
    return lzma.LZMADecompressor(lzma.FORMAT_XZ).decompress(data)


def _unlzma(data: bytes) -> bytes:
    """Decompress a legacy ``.lzma`` (LZMA_alone) stream."""
    return lzma.LZMADecompressor(lzma.FORMAT_ALONE).decompress(data)


def _bunzip2(data: bytes) -> bytes:
    """Decompress one bzip2 stream, ignoring trailing data."""
    return bz2.BZ2Decompressor().decompress(data)


def _unzstd(data: bytes) -> bytes:
    """Decompress a zstd frame with the ``zstd`` tool (not in the 3.11 stdlib)."""
    tool = shutil.which("zstd")
    if tool is None:
        raise InfraError("the kernel payload is zstd-compressed and Python 3.11 has no zstd "
                         "module: install the zstd tool (apt-get install zstd)")
    proc = subprocess.run([tool, "-d", "-q", "-c"], input=data, capture_output=True,
                          timeout=ZSTD_TIMEOUT_S, check=False)
    # zstd complains about trailing garbage after the frame but still writes it out
    return proc.stdout


# magic -> (name, decompressor); order follows scripts/extract-vmlinux
PAYLOAD_MAGICS: dict[bytes, tuple[str, Callable[[bytes], bytes]]] = {
    b"\x1f\x8b\x08": ("gzip", _gunzip),
    b"\xfd7zXZ\x00": ("xz", _unxz),
    b"BZh": ("bzip2", _bunzip2),
    b"\x5d\x00\x00\x00": ("lzma", _unlzma),
    b"\x28\xb5\x2f\xfd": ("zstd", _unzstd),
}


def _candidates(image: bytes) -> Iterator[tuple[int, bytes]]:
    """Every (offset, magic) in *image*, in file order."""
    hits = []
    for magic in PAYLOAD_MAGICS:
        pos = image.find(magic)
        while pos >= 0:
            hits.append((pos, magic))
            pos = image.find(magic, pos + 1)
    yield from sorted(hits)


def extract_vmlinux(vmlinuz: bytes) -> bytes:
    """The uncompressed ELF ``vmlinux`` inside a bzImage; raises InfraError if none.

    An image that already is an ELF file is returned unchanged.
    """
    if vmlinuz.startswith(ELF_MAGIC):
        return vmlinuz
    tried: list[str] = []
    for offset, magic in _candidates(vmlinuz):
        name, decompress = PAYLOAD_MAGICS[magic]
        try:
            out = decompress(vmlinuz[offset:])
        except (OSError, EOFError, ValueError, lzma.LZMAError, zlib.error):
            continue
        if out.startswith(ELF_MAGIC):
            return out
        tried.append(f"{name}@{offset:#x}")
    raise InfraError("no compressed payload in the kernel image decompresses to an ELF "
                     f"vmlinux (decompressed but not ELF: {', '.join(tried) or 'none'})")


def btf_section(elf: bytes) -> bytes:
    """The raw ``.BTF`` section of an ELF file (vmlinux or a module ``.ko``)."""
    import io

    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile

    try:
        section = ELFFile(io.BytesIO(elf)).get_section_by_name(".BTF")
    except ELFError as exc:
        raise InfraError(f"not an ELF file: {exc}") from exc
    if section is None:
        raise InfraError("the ELF file has no .BTF section (kernel built without "
                         "CONFIG_DEBUG_INFO_BTF?)")
    return bytes(section.data())
