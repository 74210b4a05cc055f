"""kallsyms: the grep command and the parser, on a recorded-style transcript."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from harness.errors import InfraError
from harness.kallsyms import SymbolLookupError, kallsyms_command, parse_kallsyms

TRANSCRIPT = (
    "ffffffff9a4114e0 D page_offset_base\n"
    "ffffffffc07a3c10 d vm_list\t[kvm]\n"
    "ffffffffc07a3c10 t vm_list_helper\t[kvm]\n"
    "0000000000031e40 d svm_data\t[kvm_amd]\n"
)


def test_parse_addresses_types_and_modules() -> None:
    syms = parse_kallsyms(TRANSCRIPT)
    assert syms["page_offset_base"] == 0xffffffff9a4114e0
    assert syms.module("page_offset_base") == ""
    assert syms["vm_list"] == 0xffffffffc07a3c10
    assert syms.module("vm_list") == "kvm"
    assert syms.symbol("svm_data").type == "d" and syms.module("svm_data") == "kvm_amd"
    assert len(syms) == 4


def test_missing_symbol_says_which() -> None:
    syms = parse_kallsyms(TRANSCRIPT)
    with pytest.raises(SymbolLookupError, match="'kvm_lock' not found.*module loaded"):
        syms["kvm_lock"]


def test_hidden_addresses_are_an_error() -> None:
    syms = parse_kallsyms("0000000000000000 D page_offset_base\n")
    with pytest.raises(SymbolLookupError, match="kptr_restrict"):
        syms["page_offset_base"]


def test_garbage_line_raises_with_the_line() -> None:
    with pytest.raises(InfraError, match="line 2.*grep: /proc/kallsyms"):
        parse_kallsyms("ffffffff81000000 T _stext\ngrep: /proc/kallsyms: No such file\n")


GREPS = [["grep"]] + ([["busybox", "grep"]] if shutil.which("busybox") else [])


@pytest.mark.parametrize("grep", GREPS, ids=" ".join)
def test_command_selects_exactly_the_names(tmp_path: Path, grep: list[str]) -> None:
    """Run the whole command with grep (and busybox's, as in the guest) on a transcript
    holding names that start with the wanted ones (``vm_list_lock``)."""
    cmd = kallsyms_command(["vm_list", "page_offset_base"])
    assert cmd.count("/proc/kallsyms") == 1
    fake = tmp_path / "kallsyms"
    fake.write_text(TRANSCRIPT + "ffffffffc0a00000 d vm_list_lock\t[kvm]\n"
                    "ffffffff82415800 D page_offset_base_x\n")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    real = " ".join([str(shutil.which(grep[0])), *grep[1:]])
    (bin_dir / "grep").write_text(f"#!/bin/sh\nexec {real} \"$@\"\n")
    (bin_dir / "grep").chmod(0o755)
    out = subprocess.run(["sh", "-c", cmd.replace("/proc/kallsyms", str(fake))],
                         capture_output=True, text=True, check=True,
                         env={"PATH": f"{bin_dir}:/usr/bin:/bin"}).stdout
    assert sorted(parse_kallsyms(out)) == ["page_offset_base", "vm_list"]


def test_command_refuses_non_symbols() -> None:
    with pytest.raises(ValueError):
        kallsyms_command(["vm_list; reboot"])
    with pytest.raises(ValueError):
        kallsyms_command([])
