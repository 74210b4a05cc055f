"""Linux as the L1: busybox console, kallsyms over the console, BTF from the image, pagemap.

Symbols: the needed ``/proc/kallsyms`` lines, read once per boot over the console
(KASLR moves them every boot), kept as ``kallsyms.txt``.  Types: vmlinux's BTF
from the image's kernel file (extracted once per image and kept beside it),
plus the split BTF of the named modules (``.ko``, or compressed ``.ko.xz`` /
``.ko.zst`` as Debian's 6.12 kernels ship them); the answers are recorded per image
(:class:`~harness.typecache.RecordedTypes`).  Boot id: ``boot_id`` of the
kernel, which a warm start must find unchanged.  Backing: the workload's own
``/proc/self/pagemap`` report of every slot page.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from harness.btf import Btf
from harness.console import LINE_START, Console, ConsoleProfile
from harness.guests.record import BackingQuery, GuestOS
from harness.images import Image
from harness.images.kmod import SUFFIXES, module_elf, module_name
from harness.kallsyms import kallsyms_command, parse_kallsyms
from harness.kernel_image import btf_section, kernel_btf
from harness.ktypes import KernelTypes
from harness.models.base import DictBacking
from harness.typecache import RecordedTypes

__all__ = ["LINUX", "linux_symbols", "linux_types", "parse_types", "pagemap_backing",
           "linux_boot_id"]

# seconds for the grep of /proc/kallsyms: under a second under QEMU, longer under Bochs
KALLSYMS_TIMEOUT = 600

CONSOLE = ConsoleProfile(
    name="linux", prompt=r"[#$] $",
    panic=(LINE_START + r"Kernel panic - not syncing", LINE_START + r"BUG: ",
           LINE_START + r"Oops: ", LINE_START + r"general protection fault",
           LINE_START + r"watchdog: BUG: soft lockup",
           LINE_START + r"rcu: INFO: rcu_sched detected stalls"),
    warning=(LINE_START + r"WARNING: CPU: \d+ PID: \d+",),
    kernel_line=r"^\[\s*\d+\.\d+\] ",
    # KASAN and KFENCE reports start with "BUG: " (a panic pattern); these are the others
    reports=(LINE_START + r"WARNING: ", LINE_START + r"UBSAN: ",
             LINE_START + r"INFO: (?:task .* blocked|rcu_|trying to register non-static key)",
             LINE_START + r"kernel BUG at ", LINE_START + r"BUG: "))


def linux_symbols(console: Console, image: Image, names: Sequence[str],
                  artifacts: Path) -> Mapping[str, int]:
    """The needed kallsyms lines of the running kernel; ``kallsyms.txt`` keeps them."""
    out = console.run(kallsyms_command(names), timeout=KALLSYMS_TIMEOUT).output
    (artifacts / "kallsyms.txt").write_text(out)
    return parse_kallsyms(out)


def linux_types(image: Image, modules: Sequence[str]) -> KernelTypes:
    """vmlinux's BTF with the split BTF of *modules*: its answers recorded beside the
    image (``types-<modules>.json``), the BTF parsed only for a question not recorded."""
    wanted = sorted({m.replace("-", "_") for m in modules})
    return RecordedTypes(lambda: parse_types(image, wanted),
                         Path(image.dir) / f"types-{'+'.join(wanted) or 'vmlinux'}.json")


def parse_types(image: Image, modules: Sequence[str]) -> Btf:
    """vmlinux's BTF from the image's kernel file, with the split BTF of *modules*."""
    wanted = {m.replace("-", "_") for m in modules}
    splits = [btf_section(module_elf(p)) for p in sorted(Path(image.modules).glob("*.ko*"))
              if p.name.endswith(SUFFIXES) and module_name(p) in wanted]
    return Btf.load(_vmlinux_btf(Path(image.dir), Path(image.kernel)), splits)


def _vmlinux_btf(image_dir: Path, kernel: Path) -> bytes:
    """vmlinux's .BTF, extracted once per image (decompressing the kernel takes a second)."""
    saved = image_dir / "vmlinux.btf"
    if saved.exists():
        return saved.read_bytes()
    btf = kernel_btf(kernel.read_bytes())
    tmp = saved.with_name(f".{saved.name}.{os.getpid()}")
    try:
        tmp.write_bytes(btf)
        os.replace(tmp, saved)
    except OSError:
        tmp.unlink(missing_ok=True)   # a read-only cache still works, only slower
    return btf


def linux_boot_id(console: Console) -> str:
    """``/proc/sys/kernel/random/boot_id``: new every boot, kept by a save and restore."""
    return console.run("cat /proc/sys/kernel/random/boot_id", timeout=30).output.strip()


def pagemap_backing(query: BackingQuery) -> DictBacking:
    """The frames the workload read from its own ``/proc/self/pagemap``."""
    return DictBacking(dict(query.reported))


LINUX = GuestOS(
    name="linux", console=CONSOLE, boot="kernel", image_builder="debian-initramfs",
    symbols=linux_symbols, types=linux_types, backing=pagemap_backing,
    boot_id=linux_boot_id)
