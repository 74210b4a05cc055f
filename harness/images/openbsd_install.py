"""Drive (watch) OpenBSD's unattended install on a serial console; fail on any surprise.

The installer's strings come from openbsd/src ``distrib/miniroot/install.sub``
rev 1.1278 (2025-08-06) and ``dot.profile`` rev 1.52 (2025-07-02).  In
autoinstall(8) every question is printed and answered on one line
(``_ask``: ``echo -n "$_q [$_def] "`` then the answer from the response
file), so the driver mostly *watches*: it checks the prompts come in the
order the sources print them (:data:`INSTALL_PROMPTS`), answers the few that
are read from the console (the ``(I)nstall, (U)pgrade...`` menu and the
``Response file location?`` fallback), stops at ``CONGRATULATIONS!`` and
raises :class:`InstallError` naming the message on any failure line the
installer prints (:data:`INSTALL_FAILURES`), on a prompt it does not expect,
on silence and on EOF.

A question the response file does not answer but that has a default is
answered silently by the installer with that default: the driver still sees
the prompt, and an unexpected one fails the install, so a new question in a
future release is caught rather than defaulted.

>>> [p.name for p in INSTALL_PROMPTS][:3]
['menu', 'dhcp_interface', 'response_file']
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from harness.errors import InfraError

__all__ = ["Prompt", "INSTALL_PROMPTS", "INSTALL_FAILURES", "SUCCESS", "InstallError",
           "InstallResult", "ConsoleLike", "drive_install", "PROMPT_LINE"]


class InstallError(InfraError):
    """The OpenBSD installer failed or did something the driver did not expect."""


class ConsoleLike(Protocol):
    """The part of ``pexpect.spawn`` the driver uses."""

    before: Any
    after: Any
    match: Any

    def expect(self, pattern: Any, timeout: float | None = -1) -> int: ...

    def sendline(self, s: str = "") -> int: ...


@dataclass(frozen=True)
class Prompt:
    """One installer question, in the order install.sub asks it."""

    name: str
    regex: re.Pattern[str]
    optional: bool = False      # asked only in some configurations
    repeat: bool = False        # may be asked again right away (loops over interfaces, sets)
    send: str | None = None     # the console answer, for questions read from the tty


def _q(name: str, text: str, **kw: Any) -> Prompt:
    return Prompt(name, re.compile(text), **kw)


# (I)nstall menu: dot.profile; the rest: install.sub, in the order do_install() asks.
INSTALL_PROMPTS: tuple[Prompt, ...] = (
    _q("menu", r"^\(I\)nstall, \(U\)pgrade, \(A\)utoinstall or \(S\)hell\?", optional=True,
       send="a"),
    _q("dhcp_interface", r"^Which network interface should be used for the initial DHCP "
       r"request\?", optional=True),
    _q("response_file", r"^Response file location\?", optional=True, send="{response_url}"),
    _q("mode", r"^\(I\)nstall or \(U\)pgrade\?", optional=True, send="i"),
    _q("terminal", r"^Terminal type\?"),
    _q("hostname", r"^System hostname\?"),
    _q("interface", r"^Network interface to configure\?", repeat=True),
    _q("ipv4", r"^IPv4 address for \w+\?", repeat=True, optional=True),   # not after 'done'
    _q("ipv6", r"^IPv6 address for \w+\?", repeat=True, optional=True),
    _q("default_route", r"^Default IPv4 route\?", optional=True),
    _q("domain", r"^DNS domain name\?", optional=True),
    _q("nameservers", r"^DNS nameservers\?", optional=True),
    _q("root_password", r"^Password for root account\?"),
    _q("root_ssh_key", r"^Public ssh key for root account\?"),
    _q("sshd", r"^Start sshd\(8\) by default\?"),
    _q("x11", r"^Do you expect to run the X Window System\?", optional=True),
    _q("xenodm", r"^Do you want the X Window System to be started by xenodm", optional=True),
    _q("console", r"^Change the default console to com0\?"),
    _q("console_speed", r"^Available speeds are|^Which speed should com0 use\?"),
    _q("user", r"^Setup a user\?"),
    _q("root_ssh", r"^Allow root ssh login\?", optional=True),
    _q("timezone_early", r"^What timezone are you in\?", optional=True),
    _q("root_disk", r"^Which disk is the root disk\?"),
    _q("encrypt", r"^Encrypt the root disk with a \(p\)assphrase or \(k\)eydisk\?",
       optional=True),
    _q("partitioning", r"^Use \(W\)hole disk MBR, whole disk \(G\)PT"),
    _q("disklabel_template", r"^URL to autopartitioning template for disklabel\?"),
    _q("more_disks", r"^Which disk do you wish to initialize\?", optional=True),
    _q("sets_location", r"^Location of sets\?"),
    _q("http_proxy", r"^HTTP proxy URL\?"),
    _q("http_server", r"^HTTP Server\?"),
    _q("server_directory", r"^Server directory\?"),
    _q("set_names", r"^Set name\(s\)\?"),
    _q("sets_location_done", r"^Location of sets\?"),
    _q("timezone", r"^What timezone are you in\?", optional=True),
    _q("time", r"^Time appears wrong\.", optional=True),
)

# Every message install.sub prints before it gives up (or asks to go on unverified).
INSTALL_FAILURES: tuple[tuple[str, str], ...] = (
    (r"Question has no answer in response file", "a question the response file misses"),
    (r"No response file found; non-interactive mode aborted\.", "no response file"),
    (r"failed; check /tmp/ai/ai\.log", "autoinstall failed"),
    (r"No autopartitioning template found\.", "the disklabel template was not served"),
    (r"Autopartitioning failed\.", "disklabel rejected the template"),
    (r"'/' must be configured!", "no root partition"),
    (r"can't both be mounted at", "duplicate mount point"),
    (r"Unable to create valid /etc/fstab\.", "no fstab"),
    (r"The following filesystems were not properly mounted", "mount failed"),
    (r"No dhcp address on interface \S+ in 30 seconds\.", "no DHCP lease"),
    (r"Unable to get a verified list of distribution sets\.", "SHA256.sig did not verify"),
    (r"Signature check of SHA256\.sig failed", "SHA256.sig did not verify"),
    (r"Cannot fetch SHA256\.sig", "SHA256.sig not served"),
    (r"Continue without verification\?", "the installer could not verify the sets"),
    (r"Checksum test for \S+ failed", "a set's checksum differs"),
    (r"Fetching of \S+ failed", "a set could not be fetched"),
    (r"Installation of \S+ failed", "a set could not be installed"),
    (r"and found no OpenBSD/\S+ sets", "no sets at the location"),
    (r"INSTALL\.\S+ not found\.", "INSTALL.<arch> missing from the sets"),
    (r"is not a valid (?:choice|hostname)", "an answer the installer refused"),
    (r"A response is required\.", "an empty answer"),
    (r"Invalid hostname\.", "an invalid hostname"),
    (r"The root password must be set\.", "no root password"),
    (r"https not supported on this platform\.", "an https URL"),
    (r"install\.site failed", "install.site failed"),
    (r"^panic: ", "the installer kernel panicked"),
    (r"^ddb(?:\{\d+\})?> ", "the installer kernel entered ddb"),
)
SUCCESS = r"CONGRATULATIONS! Your OpenBSD install has been successfully completed!"
# A question line: starts like a sentence and has a '?' followed by a blank or the end
# of the line (install.sub's questions all do); "Fetching http://...?path=" is not one.
PROMPT_LINE = r"(?m)^(?!Fetching )[A-Z(][^\n?]*\?(?= |\r?$)"


@dataclass
class InstallResult:
    """The prompts seen, by name, in order; the step at which it ended."""

    prompts: list[str] = field(default_factory=list)
    answered: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class _State:
    pos: int = 0            # index of the next expected prompt in INSTALL_PROMPTS
    last: str | None = None


def drive_install(console: ConsoleLike, *, response_url: str, step_timeout: float = 900,
                  log: Callable[[str], None] | None = None,
                  prompts: Sequence[Prompt] = INSTALL_PROMPTS) -> InstallResult:
    """Watch the installer on *console* until it succeeds; InstallError otherwise."""
    failures = [re.compile(p + r"[^\r\n]*", re.MULTILINE) for p, _why in INSTALL_FAILURES]
    patterns = [*failures, re.compile(SUCCESS), re.compile(PROMPT_LINE + r"[^\n]*")]
    state, result = _State(), InstallResult()
    say = log or (lambda _m: None)
    while True:
        try:
            i = console.expect(patterns, timeout=step_timeout)
        except Exception as exc:          # pexpect.TIMEOUT / EOF, or a closed console
            where = f"after prompt {state.last!r}" if state.last else "before any prompt"
            raise InstallError(f"OpenBSD installer: {type(exc).__name__} {where} "
                               f"(no output for {step_timeout:.0f} s or console closed)") \
                from exc
        text = _text(console.after)
        if i > len(failures):             # a question: it may carry a failure message
            i = next((k for k, f in enumerate(failures) if f.search(text)), i)
        if i < len(failures):
            raise InstallError(f"OpenBSD installer failed ({INSTALL_FAILURES[i][1]}): "
                               f"{_line(console, text)!r}")
        if i == len(failures):
            say("OpenBSD install: CONGRATULATIONS")
            return result
        _on_prompt(console, text, prompts, state, result, response_url, say)


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _line(console: ConsoleLike, text: str) -> str:
    """The whole console line holding a match: the text before it on its line, the
    match, and the rest of the line if it arrives within a second."""
    before = _text(console.before).rsplit("\n", 1)[-1]
    try:
        console.expect([re.compile(r"\r?\n")], timeout=1)
        rest = _text(console.before)
    except Exception:                     # no newline came: the line is what we have
        rest = ""
    return (before + text + rest).strip()


def _on_prompt(console: ConsoleLike, text: str, prompts: Sequence[Prompt], state: _State,
               result: InstallResult, response_url: str, say: Callable[[str], None]) -> None:
    """Match a question line to the next expected prompt; answer it if it is read from tty."""
    line = text.strip()
    step = _next(prompts, state, line)
    if step is None:
        want = [p.name for p in prompts[state.pos:state.pos + 3]]
        raise InstallError(f"OpenBSD installer asked an unexpected question {line!r} "
                           f"(after {state.last!r}; expected one of {want})")
    result.prompts.append(step.name)
    state.last = step.name
    say(f"OpenBSD install: {line}")
    if step.send is not None:
        answer = step.send.format(response_url=response_url)
        console.sendline(answer)
        result.answered.append((step.name, answer))


def _next(prompts: Sequence[Prompt], state: _State, line: str) -> Prompt | None:
    """The prompt *line* is: one of the loop just asked (a run of repeatable prompts
    ending at the last one, e.g. interface / IPv4 / IPv6), or the next one,
    optional ones skipped."""
    j = state.pos - 1
    while j >= 0 and prompts[j].repeat:
        if prompts[j].regex.search(line):
            state.pos = j + 1
            return prompts[j]
        j -= 1
    for i in range(state.pos, len(prompts)):
        if prompts[i].regex.search(line):
            state.pos = i + 1
            return prompts[i]
        if not prompts[i].optional:
            return None
    return None
