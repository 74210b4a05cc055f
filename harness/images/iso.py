"""A bootable ISOLINUX CD-ROM holding the kernel and the initramfs.

Emulators without direct kernel boot (Bochs) boot the L1 through their BIOS from
a CD-ROM.  The ISO is an El Torito "no emulation" image made with ``xorriso``'s
mkisofs mode; ISOLINUX (Debian's ``isolinux`` and ``syslinux-common``
packages) loads ``/vmlinuz`` and ``/initrd.gz`` with the recipe's command line
from ``/isolinux/isolinux.cfg``.  Timestamps come from ``SOURCE_DATE_EPOCH``
(fixed), so the same inputs give the same bytes.

>>> print(isolinux_cfg("console=ttyS0 quiet"), end="")
DEFAULT linux
PROMPT 0
TIMEOUT 0
LABEL linux
  KERNEL /vmlinuz
  INITRD /initrd.gz
  APPEND console=ttyS0 quiet
"""

from __future__ import annotations

import shutil
from pathlib import Path

from harness.images.host import run_tool

__all__ = ["isolinux_cfg", "build_iso", "ISO_NAME", "SOURCE_DATE_EPOCH"]

ISO_NAME = "slatcheck.iso"
SOURCE_DATE_EPOCH = "1700000000"     # fixed file dates: reproducible images
VOLUME_ID = "SLATCHECK"


def isolinux_cfg(append: str) -> str:
    """ISOLINUX's configuration: boot the one entry at once, no prompt."""
    return ("DEFAULT linux\nPROMPT 0\nTIMEOUT 0\nLABEL linux\n"
            "  KERNEL /vmlinuz\n  INITRD /initrd.gz\n"
            f"  APPEND {append}\n")


def build_iso(out: Path, *, kernel: Path, initrd: Path, append: str, isolinux_bin: Path,
              ldlinux_c32: Path, work: Path) -> None:
    """Write the ISO to *out*, staging its tree in *work* (created)."""
    tree = work / "iso"
    (tree / "isolinux").mkdir(parents=True)
    shutil.copyfile(kernel, tree / "vmlinuz")
    shutil.copyfile(initrd, tree / "initrd.gz")
    shutil.copyfile(isolinux_bin, tree / "isolinux" / "isolinux.bin")
    shutil.copyfile(ldlinux_c32, tree / "isolinux" / "ldlinux.c32")
    (tree / "isolinux" / "isolinux.cfg").write_text(isolinux_cfg(append))
    run_tool(["xorriso", "-as", "mkisofs", "-quiet", "-o", str(out), "-V", VOLUME_ID,
              "-b", "isolinux/isolinux.bin", "-c", "isolinux/boot.cat",
              "-no-emul-boot", "-boot-load-size", "4", "-boot-info-table",
              "-r", str(tree)], env={"SOURCE_DATE_EPOCH": SOURCE_DATE_EPOCH})
