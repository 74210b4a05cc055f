"""OpenBSD console patterns on transcripts composed from the kernel's strings."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.openbsd_console import (
    DDB_NOTICE,
    DDB_PROMPT,
    LOGIN_PROMPT,
    PANIC_PATTERNS,
    VMM_ATTACH,
    ddb_collect_commands,
    ddb_cpu,
    match_panic,
)

DATA = Path(__file__).parent.parent / "data" / "console"


def transcript(name: str) -> str:
    return (DATA / name).read_bytes().decode()


def test_uvm_fault_transcript() -> None:
    text = transcript("openbsd-uvm-fault-ddb.log")
    m = match_panic(text)
    assert m is not None and m.name == "uvm_fault"
    assert m.message == "0xffffffff82a61f00, 0x18, 0, 2) -> e"
    assert m.line == "uvm_fault(0xffffffff82a61f00, 0x18, 0, 2) -> e"
    assert ddb_cpu(text) == 1
    assert DDB_NOTICE in text.replace("\r", "")
    assert VMM_ATTACH.search(text.replace("\r", "")).group("mode") == "SVM/RVI"


def test_kassert_transcript() -> None:
    text = transcript("openbsd-kassert-ddb.log")
    m = match_panic(text)
    assert m is not None and m.name == "kassert"
    assert m.message == "vm->vm_pmap != NULL"
    assert ddb_cpu(text) == 1          # the last prompt, after machine ddbcpu 1
    assert [p.group("cpu") for p in DDB_PROMPT.finditer(text)] == ["0", "0", "1"]


def test_clean_boot_has_no_failure_and_a_login_prompt() -> None:
    text = transcript("openbsd-boot-login.log")
    assert match_panic(text) is None
    assert ddb_cpu(text) is None
    assert LOGIN_PROMPT.search(text.replace("\r", "")) is not None


@pytest.mark.parametrize("line, name", [
    ("panic: pool_do_get: vmpool free list modified", "panic"),
    ("kernel: protection fault trap, code=0", "kernel_trap"),
    ("trap type 6, code=0, pc=ffffffff81a3c0d4", "trap"),
    ("Stopped at\tdb_enter+0x14:  popq %rbp", "ddb"),
    ('panic: kernel diagnostic assertion "x" failed: file "f.c", line 1', "kassert"),
])
def test_each_pattern(line: str, name: str) -> None:
    m = match_panic(f"boot ok\r\n{line}\r\nddb> ")
    assert m is not None and m.name == name


@pytest.mark.parametrize("line", [
    "reorder_kernel: kernel relinking done",
    "echo panic: is only a word here",          # not at the start of a line
    "no panic:here",
    "Stopped atx",
])
def test_near_misses_do_not_match(line: str) -> None:
    assert match_panic(line + "\n") is None


def test_every_pattern_names_its_source() -> None:
    assert all(p.source.startswith("sys/") for p in PANIC_PATTERNS)
    assert len({p.name for p in PANIC_PATTERNS}) == len(PANIC_PATTERNS)


def test_uniprocessor_prompt_and_collect_commands() -> None:
    assert ddb_cpu("ddb> ") == 0
    assert ddb_collect_commands(1) == ["show panic", "trace", "ps", "show registers"]
    cmds = ddb_collect_commands(4, current=2)
    assert cmds[4:] == ["machine ddbcpu 0", "trace", "machine ddbcpu 1", "trace",
                        "machine ddbcpu 3", "trace", "machine ddbcpu 2"]
    with pytest.raises(ValueError):
        ddb_collect_commands(2, current=2)
