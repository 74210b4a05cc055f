"""What every Linux observer fetches before halting L1: symbols and type information."""

from __future__ import annotations

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
    from harness.kernel_image import btf_section, kernel_btf
    if "btf" in ctx.cache:
        return
    img = ctx.image
    wanted = set(modules)
    splits = [btf_section(p.read_bytes()) for p in sorted(Path(img.modules).glob("*.ko"))
              if p.stem.replace("-", "_") in wanted]
    ctx.cache["btf"] = Btf.load(kernel_btf(Path(img.kernel).read_bytes()), splits)
