"""The ``mail`` report: a reply to a patch on a mailing list, as an RFC 5322 message.

Built with the standard library's :mod:`email` package: ``From`` (``--from``, else
git's ``user.name`` and ``user.email``), ``To``/``Cc``, ``Subject: Re: <original>``,
``In-Reply-To``/``References`` threading it under the patch, ``Date`` and
``Message-ID``.  The plain-text body keeps every line within :data:`WIDTH` columns:
a one-line summary (with ``--baseline``, how many scenarios regressed), ``Tested-on:``
(emulator, L1 CPU, L1 kernel and where it came from, slatcheck), the summary table
(with the baseline's outcome per scenario when given), each finding of every failing
scenario, why a scenario was skipped, the command that reproduces the run, and -- only
when every scenario came out as it expects -- a ``Tested-by:`` trailer.
:func:`write_mbox` writes it as an mbox file for ``git send-email``.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Mapping, Sequence
from email import policy
from email.generator import BytesGenerator
from email.message import EmailMessage
from email.utils import formataddr, formatdate, make_msgid, parseaddr
from pathlib import Path

from harness.compare import VerdictChange
from harness.errors import ScenarioError
from harness.findings import Finding
from harness.reports.options import MailHeaders, ReportOptions
from harness.reports.origin import origin_lines, origins
from harness.reports.table import summary_table
from harness.reports.text import failing, reproduce
from harness.reports.wrap import fit, fit_all, shell_lines
from harness.result import ScenarioResult, matches_expectation
from harness.signature import signature, where_of

__all__ = ["WIDTH", "build_mail", "render_mail", "write_mbox", "reply_subject",
           "git_identity", "check_sender", "all_passed"]

WIDTH = 72
MAX_FINDINGS = 50


# Headers are not folded below RFC 5322's hard limit of 998: git send-email reads the
# Subject from one line only ("No subject line in ...?" for a folded long patch subject).
MAIL_POLICY = policy.default.clone(max_line_length=998)


def git_identity() -> str:
    """``Name <email>`` from ``git config user.name`` / ``user.email``, or ""."""
    def get(key: str) -> str:
        try:
            out = subprocess.run(["git", "config", key], capture_output=True, text=True,
                                 timeout=10, check=False)
        except (OSError, subprocess.SubprocessError):
            return ""
        return out.stdout.strip()
    email = get("user.email")
    return formataddr((get("user.name"), email)) if email else ""


def _sender(headers: MailHeaders) -> str:
    sender = headers.sender or git_identity()
    if not parseaddr(sender)[1]:
        raise ScenarioError("the mail needs a sender: set git config user.name and "
                            "user.email (or give `slatcheck report --from 'Name <email>'`)")
    return sender


def check_sender() -> None:
    """Raise the ScenarioError of a mail written with no ``--from`` (``run --report mail=``)
    when git knows no sender either."""
    _sender(MailHeaders())


def reply_subject(subject: str, results: Sequence[ScenarioResult]) -> str:
    """``Re: <subject>`` (never ``Re: Re:``); without a subject, the one-line summary.

    >>> reply_subject("Re: [PATCH] KVM: x86/mmu: fix", []), reply_subject("[PATCH] x", [])
    ('Re: [PATCH] KVM: x86/mmu: fix', 'Re: [PATCH] x')
    """
    if not subject:
        return _headline(results, None)
    return subject if subject[:3].lower() == "re:" else f"Re: {subject}"


def all_passed(results: Sequence[ScenarioResult]) -> bool:
    """Every scenario ran and came out as it expects (no failure, no skip)."""
    return bool(results) and all(r.outcome in ("passed", "xfailed") for r in results)


def _headline(results: Sequence[ScenarioResult],
              baseline: Mapping[str, ScenarioResult] | None) -> str:
    """``slatcheck on 6.12.0: 1 of 3 failed, 1 skipped, 1 regressed`` (one line; regressed:
    came out worse than on the baseline, when one is given)."""
    kernels = sorted({o.kernel for o in origins(results) if o.kernel})
    head = f"slatcheck on {', '.join(kernels)}" if kernels else "slatcheck"
    if all_passed(results):
        xfailed = sum(r.outcome == "xfailed" for r in results)
        said = [f"all {len(results)} passed" if not xfailed else
                f"all {len(results)} as expected ({len(results) - xfailed} passed, "
                f"{xfailed} xfailed)"]
    else:
        said = [f"{sum(r.outcome == 'failed' for r in results)} of {len(results)} failed"]
        skipped = sum(r.outcome == "skipped" for r in results)
        said += [f"{skipped} skipped"] if skipped else []
    if baseline is not None:
        worse = sum(VerdictChange(r.name, baseline.get(r.name), r).regressed for r in results)
        said.append(f"{worse} regressed")
    return f"{head}: {', '.join(said)}"


def _finding(res: ScenarioResult, f: Finding) -> list[str]:
    """One finding: what and where, expected and observed, the entry, the signature."""
    vm = f" in {f.vm}" if f.vm.strip("-") else ""
    lines = [f"  {f.kind}{vm}" + (f" at {where_of(f)}" if f.gpa is not None else "")]
    if f.gpa is not None:
        lines.append(f"    GPA {f.gpa:#x}: expected {f.to_json()['expected']}, "
                     f"observed {f.to_json()['observed']}")
    elif f.detail:
        lines += [f"    {line}" for line in f.detail.splitlines()[:6]]
    if f.entry is not None or f.raw is not None:
        entry = f"entry at {f.entry:#x}" if f.entry is not None else "entry"
        raw = f" = {f.raw:#018x}" if f.raw is not None else ""
        level = f" (level {f.level})" if f.level is not None else ""
        lines.append(f"    {entry}{raw}{level}")
    if f.gpa is not None and f.detail:
        lines.append(f"    {f.detail.splitlines()[0]}")
    lines.append(f"    signature {signature(res.name, res.hypervisor, f).id}")
    return lines


def _failure(res: ScenarioResult, base: ScenarioResult | None) -> list[str]:
    """A failing scenario: why (and how it came out on the baseline), then its findings."""
    step = f" in {res.failed_step}" if res.failed_step else ""
    was = f" (baseline: {base.outcome})" if base is not None else ""
    lines = [f"{res.name}: {res.verdict}{step}{was}"]
    message = res.message.splitlines()           # the findings below say the rest
    lines += [f"  {line}" for line in message[:1 if res.findings else 12]]
    if res.expect.verdict != "pass":
        lines.append(f"  {matches_expectation(res)[1]}")
    for f in res.findings[:MAX_FINDINGS]:
        lines += _finding(res, f)
    if len(res.findings) > MAX_FINDINGS:
        lines.append(f"  ... {len(res.findings) - MAX_FINDINGS} more in findings.json")
    return lines


def _reproduce(results: Sequence[ScenarioResult]) -> list[str]:
    """The distinct recorded command lines, each as a shell command within the width."""
    commands = list(dict.fromkeys(tuple(reproduce(r)) for r in results if reproduce(r)))
    lines = ["To reproduce:"] if commands else []
    for argv in commands:
        lines += shell_lines(argv, WIDTH, indent="  ")
    return lines


def _table(results: Sequence[ScenarioResult], options: ReportOptions) -> str:
    """The summary table, without its time column when that makes it too wide."""
    table = summary_table(results, options.baseline)
    if max(len(line) for line in table.splitlines()) <= WIDTH:
        return table
    return summary_table(results, options.baseline, times=False)


def _body(results: Sequence[ScenarioResult], options: ReportOptions, sender: str) -> str:
    """The plain-text body, every line within :data:`WIDTH` columns."""
    tested_on = origin_lines(origins(results))
    sections = [fit(_headline(results, options.baseline), WIDTH),
                ["Tested-on:", *(p for line in tested_on for p in fit(f"  {line}", WIDTH))],
                fit_all(_table(results, options), WIDTH)]
    baseline = options.baseline or {}
    sections += [[p for line in _failure(r, baseline.get(r.name)) for p in fit(line, WIDTH)]
                 for r in failing(results)]
    skipped = [f"  {r.name}: {' '.join(r.message.split())}" for r in results
               if r.outcome == "skipped"]
    sections.append(["Skipped:", *(p for line in skipped for p in fit(line, WIDTH))]
                    if skipped else [])
    sections.append(_reproduce(results))
    if all_passed(results):
        sections.append([f"Tested-by: {sender}"])
    return "\n\n".join("\n".join(s) for s in sections if s) + "\n"


def _msgid(value: str) -> str:
    """A message id in angle brackets."""
    value = value.strip()
    return value if value.startswith("<") else f"<{value}>"


def build_mail(results: Sequence[ScenarioResult], options: ReportOptions | None = None
               ) -> EmailMessage:
    """The reply (see the module's docstring)."""
    options = options or ReportOptions()
    head = options.mail
    sender = _sender(head)
    msg = EmailMessage(policy=MAIL_POLICY)
    msg["From"] = sender
    if head.to:
        msg["To"] = ", ".join(head.to)
    if head.cc:
        msg["Cc"] = ", ".join(head.cc)
    msg["Subject"] = reply_subject(head.subject, results)
    msg["Date"] = formatdate(localtime=True)
    msg["Message-ID"] = make_msgid("slatcheck", domain=parseaddr(sender)[1].partition("@")[2]
                                   or None)
    thread = [_msgid(m) for m in (*head.references, head.in_reply_to) if m]
    if thread:
        msg["In-Reply-To"] = thread[-1]
        msg["References"] = " ".join(dict.fromkeys(thread))
    body = _body(results, options, sender)
    msg.set_content(body, cte="7bit" if body.isascii() else "8bit")   # never quoted-printable
    return msg


def render_mail(results: Sequence[ScenarioResult], options: ReportOptions | None = None
                ) -> str:
    """The reply as text (LF line ends, as mail files on disk are kept)."""
    return build_mail(results, options).as_string()


def write_mbox(msg: EmailMessage, path: Path) -> None:
    """*msg* as a one-message mbox file (a ``From `` line first; body ``From `` escaped)."""
    sender = parseaddr(str(msg["From"]))[1] or "slatcheck"
    msg.set_unixfrom(f"From {sender} {time.asctime(time.gmtime())}")
    with path.open("wb") as out:
        BytesGenerator(out, mangle_from_=True, policy=MAIL_POLICY).flatten(msg,
                                                                             unixfrom=True)
