"""What every Linux observer fetches before halting L1: symbols and type information."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = ["fetch_kallsyms", "load_btf"]


def fetch_kallsyms(ctx: Any, names: Iterable[str]) -> None:
    """Read the needed /proc/kallsyms lines over the console once per run (KASLR)."""
    from harness.kallsyms import kallsyms_command, parse_kallsyms
    if "kallsyms" not in ctx.cache:
        out = ctx.console.run(kallsyms_command(names), timeout=60).output
        (ctx.run_dir / "kallsyms.txt").write_text(out)
        ctx.cache["kallsyms"] = parse_kallsyms(out)


def load_btf(ctx: Any, modules: Iterable[str] = ()) -> None:
    """vmlinux's BTF from the image's kernel file, with the split BTF of *modules*."""
    from harness.btf import Btf
    from harness.kernel_image import btf_section
    if "btf" in ctx.cache:
        return
    img = ctx.image
    wanted = set(modules)
    splits = [btf_section(p.read_bytes()) for p in sorted(Path(img.modules).glob("*.ko"))
              if p.stem.replace("-", "_") in wanted]
    ctx.cache["btf"] = Btf.load(_vmlinux_btf(Path(img.dir), Path(img.kernel)), splits)


def _vmlinux_btf(image_dir: Path, kernel: Path) -> bytes:
    """vmlinux's .BTF, extracted once per image (decompressing the kernel takes a second)."""
    from harness.kernel_image import kernel_btf
    saved = image_dir / "vmlinux.btf"
    if saved.exists():
        return saved.read_bytes()
    btf = kernel_btf(kernel.read_bytes())
    tmp = saved.with_name(f".{saved.name}.{os.getpid()}")
    try:
        tmp.write_bytes(btf)
        os.replace(tmp, saved)
    except OSError:
        pass            # a read-only cache still works, only slower
    return btf
