"""OpenBSD console strings as data: panic and ddb(4) patterns, the commands to collect.

The strings are the kernel's own (openbsd/src, 2025 revisions):

* ``kern/subr_prf.c`` ``panic()``: ``panic: <message>``; ``KASSERT`` panics
  with ``kernel diagnostic assertion "<expr>" failed: file "<f>", line <n>``;
* ``arch/amd64/amd64/trap.c`` rev 1.114 ``kpageflttrap()``:
  ``uvm_fault(<map>, 0x<va>, 0, <access>) -> <errno>``, and ``kerntrap()``:
  ``trap type <n>, code=<x>, pc=<x>``;
* ``db_ktrap()`` (amd64 ``db_interface.c``) before ddb: ``kernel: page fault
  trap, code=0``;
* ``ddb/db_trap.c`` rev 1.30: ``Stopped at\\t<symbol+off>:<insn>``, the on-proc
  processes, a 14-frame trace, then the ``https://www.openbsd.org/ddb.html``
  notice; ``ddb/db_command.c`` ``db_command_loop()``: the prompt ``ddb{<cpu>}> ``
  (MULTIPROCESSOR kernels, GENERIC.MP) or ``ddb> ``.

On a panic the harness collects ``show panic``, ``trace``, ``ps``,
``show registers`` and then each other CPU's trace through ``machine ddbcpu
<n>`` (``ddb/db_command.c``'s ``machine`` table, amd64 ``db_machine_command_table``:
``ddbcpu``); ``boot reboot`` / ``boot poweroff`` leave ddb.  The OpenBSD console
profile (:data:`CONSOLE`) with its ddb collection lives here, where both the guest record
and the image builder take it.

>>> match_panic("ok\\npanic: kernel diagnostic assertion \\"p != NULL\\" failed\\n").name
'kassert'
>>> ddb_cpu("ddb{1}> ")
1
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from harness.console import LINE_START, Console, ConsoleProfile
from harness.ddb import collect, format_transcript

__all__ = ["PanicPattern", "PANIC_PATTERNS", "DDB_PROMPT", "LOGIN_PROMPT", "PASSWORD_PROMPT",
           "PanicMatch", "match_panic", "ddb_cpu", "ddb_collect_commands", "DDB_LEAVE",
           "DDB_NOTICE", "VMM_ATTACH"]


@dataclass(frozen=True)
class PanicPattern:
    """One way an OpenBSD kernel says it has failed."""

    name: str
    regex: re.Pattern[str]
    source: str               # the file that prints it


def _p(name: str, pattern: str, source: str) -> PanicPattern:
    return PanicPattern(name, re.compile(pattern, re.MULTILINE), source)


# Most specific first: the first pattern that matches names the failure.
PANIC_PATTERNS: tuple[PanicPattern, ...] = (
    _p("kassert", r'^panic: kernel diagnostic assertion "(?P<msg>.*?)" failed',
       "sys/kern/subr_prf.c (KASSERT)"),
    _p("uvm_fault", r"^(?:panic: )?(?:\*?cpu\d+: )?uvm_fault\((?P<msg>[^)]*\) -> \w+)",
       "sys/arch/amd64/amd64/trap.c kpageflttrap()"),
    _p("trap", r"^(?:panic: )?trap type (?P<msg>\d+, code=\w+, pc=\w+)",
       "sys/arch/amd64/amd64/trap.c kerntrap()"),
    _p("kernel_trap", r"^kernel: (?P<msg>[\w ]+ trap, code=\w+)",
       "sys/arch/amd64/amd64/db_interface.c db_ktrap() [composed: seen in real transcripts]"),
    _p("panic", r"^panic: (?P<msg>.*)$", "sys/kern/subr_prf.c panic()"),
    _p("ddb", r"^Stopped at\s+(?P<msg>.*)$", "sys/ddb/db_trap.c db_trap()"),
)

# db_command_loop(): "ddb{%d}> " with MULTIPROCESSOR, else "ddb> "
DDB_PROMPT = re.compile(r"ddb(?:\{(?P<cpu>\d+)\})?> ")
DDB_NOTICE = "https://www.openbsd.org/ddb.html describes the minimum info required in bug"
DDB_LEAVE = "boot reboot"         # or "boot poweroff"; "boot dump" writes a crash dump
LOGIN_PROMPT = re.compile(r"^\S+ login: ", re.MULTILINE)   # getty: "<host> login: "
PASSWORD_PROMPT = "Password:"
VMM_ATTACH = re.compile(r"^vmm0 at mainbus0: (?P<mode>SVM/RVI|VMX/EPT)", re.MULTILINE)
DDB_COMMANDS = ("show panic", "trace", "ps", "show registers")


@dataclass(frozen=True)
class PanicMatch:
    """The first failure line found: which pattern, its message, the line itself."""

    name: str
    message: str
    line: str


def match_panic(text: str) -> PanicMatch | None:
    """The most specific failure in *text* (console output), or None.

    Carriage returns are ignored (the serial console sends ``\\r\\n``).
    """
    clean = text.replace("\r", "")
    for pat in PANIC_PATTERNS:
        m = pat.regex.search(clean)
        if m:
            start = clean.rfind("\n", 0, m.start()) + 1
            end = clean.find("\n", m.end())
            return PanicMatch(pat.name, m.group("msg"), clean[start:end if end >= 0 else None])
    return None


def ddb_cpu(text: str) -> int | None:
    """The CPU of the last ddb prompt in *text*; 0 for a uniprocessor ``ddb> ``; None if none."""
    last = None
    for m in DDB_PROMPT.finditer(text):
        last = m
    if last is None:
        return None
    return int(last.group("cpu")) if last.group("cpu") is not None else 0


def ddb_collect_commands(ncpus: int, current: int = 0) -> list[str]:
    """The ddb commands to run after a panic on a machine with *ncpus* CPUs.

    ``show panic``, ``trace``, ``ps``, ``show registers`` on the CPU that
    entered ddb, then ``machine ddbcpu N`` and ``trace`` for every other
    CPU, then back to *current* (so the last prompt is the panicking CPU's).

    >>> ddb_collect_commands(2)
    ['show panic', 'trace', 'ps', 'show registers', 'machine ddbcpu 1', 'trace', 'machine ddbcpu 0']
    """
    if ncpus < 1 or not 0 <= current < ncpus:
        raise ValueError(f"ddb_collect_commands: cpu {current} of {ncpus}")
    cmds = list(DDB_COMMANDS)
    others = [c for c in range(ncpus) if c != current]
    for cpu in others:
        cmds += [f"machine ddbcpu {cpu}", "trace"]
    if others:
        cmds.append(f"machine ddbcpu {current}")
    return cmds


CPU_ATTACH = re.compile(r"(?m)^cpu(\d+) at mainbus0")


def cpu_count(boot_log: str) -> int:
    """How many CPUs attached, from the dmesg on the console (at least 1).

    >>> cpu_count("cpu0 at mainbus0: apid 0\\ncpu1 at mainbus0: apid 1\\n")
    2
    """
    return max([int(n) + 1 for n in CPU_ATTACH.findall(boot_log)] or [1])


def openbsd_ddb(console: Console) -> str:
    """In ddb after a panic: every CPU's view; the transcript."""
    try:
        log = console.log_path.read_text(errors="replace")
    except OSError:
        log = ""
    ncpus = cpu_count(log)
    current = ddb_cpu(log) or 0
    commands = ddb_collect_commands(ncpus, current if current < ncpus else 0)
    return format_transcript(collect(console, commands, DDB_PROMPT))


CONSOLE = ConsoleProfile(
    name="openbsd", prompt=r"[#$] $",
    panic=(LINE_START + r"panic: ", r"ddb(?:\{\d+\})?> ", LINE_START + r"uvm_fault\(",
           LINE_START + r"kernel: page fault trap, code="),
    debugger=openbsd_ddb)
