"""Getting ``vmlinux`` and its ``.BTF`` section out of a distribution kernel.

A bzImage (``vmlinuz``) carries the kernel as one compressed payload after the
real-mode setup code.  :func:`extract_vmlinux` finds it by scanning for the
compression magics the kernel's ``scripts/extract-vmlinux`` also tries, and
stops at the first payload that decompresses to an ELF file.  gzip, xz, lzma
and bzip2 use the standard library (Debian 12's 6.1 kernels are xz:
``CONFIG_KERNEL_XZ=y``); zstd goes through the ``zstd`` command-line tool,
since Python 3.11 has no zstd module.

:func:`pvh_entry` reads the PVH entry note of an x86-64 vmlinux, through which QEMU
boots it uncompressed (a recipe's ``entry: pvh``).

An arm64 ``vmlinuz`` is not a bzImage but the raw ``Image`` itself (no ELF
headers, no compression): :func:`kernel_btf` then finds vmlinux's ``.BTF``
bytes in it by their header (magic 0xeB9F, version 1, a 24-byte header,
strings right after the types), as :func:`raw_image_btf` does.  This needs
neither the guest nor a debug package.

>>> import gzip; elf = b"\\x7fELF" + bytes(60)
>>> extract_vmlinux(b"MZ" + bytes(100) + gzip.compress(elf)) == elf
True
"""

from __future__ import annotations

import bz2
import lzma
import shutil
import struct
import subprocess
import zlib
from collections.abc import Callable, Iterator

from harness.errors import InfraError

__all__ = ["extract_vmlinux", "boot_elf", "pvh_entry", "btf_section", "kernel_btf", "raw_image_btf",
           "ELF_MAGIC", "PAYLOAD_MAGICS", "ARM64_IMAGE_MAGIC", "BTF_MAGIC"]

ELF_MAGIC = b"\x7fELF"
ZSTD_TIMEOUT_S = 120
ARM64_IMAGE_MAGIC = b"ARM\x64"     # at offset 0x38 of an arm64 Image header
BTF_MAGIC = b"\x9f\xeb\x01\x00"    # u16 0xeB9F, version 1, flags 0 (little endian)
BTF_HEADER = struct.Struct("<HBBIIIII")  # magic version flags hdr_len type_off/len str_off/len


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


XEN_ELFNOTE_PHYS32_ENTRY = 18     # the PVH entry point note (CONFIG_PVH), xen/interface/elfnote.h
PT_NOTE = 4
_EHDR = struct.Struct("<4sB")      # magic, EI_CLASS
_PHDR64 = struct.Struct("<IIQQQQQQ")   # p_type p_flags p_offset p_vaddr p_paddr p_filesz ...
_NHDR = struct.Struct("<III")      # n_namesz n_descsz n_type


def _notes(elf: bytes) -> Iterator[tuple[bytes, int, bytes]]:
    """(name, type, descriptor) of every note in the PT_NOTE segments of an ELF64 file."""
    phoff, = struct.unpack_from("<Q", elf, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
    for i in range(phnum):
        p_type, _, offset, _, _, filesz, _, _ = _PHDR64.unpack_from(elf, phoff + i * phentsize)
        if p_type != PT_NOTE:
            continue
        pos, end = offset, offset + filesz
        while pos + _NHDR.size <= end:
            namesz, descsz, n_type = _NHDR.unpack_from(elf, pos)
            name_at = pos + _NHDR.size
            desc_at = name_at + (namesz + 3) // 4 * 4
            yield (elf[name_at:name_at + namesz].rstrip(b"\0"), n_type,
                   elf[desc_at:desc_at + descsz])
            pos = desc_at + (descsz + 3) // 4 * 4


def pvh_entry(elf: bytes) -> int | None:
    """The 32-bit PVH entry point of an x86-64 vmlinux (Xen note PHYS32_ENTRY), or None.

    QEMU boots such an ELF file given to ``-kernel`` straight at that entry: no setup
    code, no decompression (the slow part under TCG) and so no KASLR either.
    """
    if not elf.startswith(ELF_MAGIC) or len(elf) < 0x40 or elf[4] != 2:    # ELFCLASS64
        return None
    try:
        for name, n_type, desc in _notes(elf):
            if name == b"Xen" and n_type == XEN_ELFNOTE_PHYS32_ENTRY and len(desc) >= 4:
                return int(struct.unpack_from("<I", desc)[0])
    except struct.error:            # a truncated file has no usable entry
        return None
    return None


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


def raw_image_btf(image: bytes) -> bytes:
    """vmlinux's ``.BTF`` bytes inside a raw (arm64) kernel Image; InfraError if none.

    A candidate must have a consistent header: 24-byte header, types at 0,
    strings right after the types, all inside the image.  The largest one
    is vmlinux's (a stray magic in code or data is never a whole header).
    """
    found = []
    pos = image.find(BTF_MAGIC)
    while pos >= 0:
        if pos + BTF_HEADER.size <= len(image):
            _m, _v, _f, hdr_len, type_off, type_len, str_off, str_len = \
                BTF_HEADER.unpack_from(image, pos)
            end = pos + hdr_len + str_off + str_len
            if (hdr_len == BTF_HEADER.size and type_off == 0 and str_off == type_len
                    and type_len and str_len and end <= len(image)):
                found.append(image[pos:end])
        pos = image.find(BTF_MAGIC, pos + 1)
    if not found:
        raise InfraError("no BTF header (magic 0xeB9F) in the kernel Image (kernel built "
                         "without CONFIG_DEBUG_INFO_BTF?)")
    return max(found, key=len)


def boot_elf(vmlinuz: bytes) -> bytes | None:
    """The ELF vmlinux of a kernel file (a bzImage's payload, or the ELF itself); None
    for a raw arm64 Image, which has no ELF inside."""
    return None if vmlinuz[0x38:0x3C] == ARM64_IMAGE_MAGIC else extract_vmlinux(vmlinuz)


def kernel_btf(vmlinuz: bytes) -> bytes:
    """vmlinux's ``.BTF`` from a distribution kernel file: bzImage, ELF or raw arm64 Image."""
    elf = boot_elf(vmlinuz)
    return raw_image_btf(vmlinuz) if elf is None else btf_section(elf)
