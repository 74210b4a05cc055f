"""``slatcheck compare`` and ``slatcheck report``: recorded runs read back, nothing boots.

``compare BASE NEW [--format text|json]``: exit 0 when nothing regressed, 1 when
something did, 2 on bad input (a missing or damaged file, named).
``report RUN_DIR... --format NAME [-o FILE] [--baseline DIR]`` writes one of the
:data:`~harness.reporters.REPORTERS`; the mail's headers come from ``--from``,
``--to``, ``--cc``, ``--subject``, ``--in-reply-to``, ``--references``, and
``--mbox FILE`` writes it as an mbox file for ``git send-email``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from harness.errors import ScenarioError

if TYPE_CHECKING:
    from harness.reports.options import ReportOptions


__all__ = ["add_parsers", "cmd_compare", "cmd_report"]


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The ``compare`` and ``report`` subcommands on *sub* (argparse's subparsers)."""
    from harness.reporters import REPORTERS
    cmp = sub.add_parser("compare", help="compare two recorded runs: verdicts, findings, "
                         "mapped state, provenance")
    cmp.add_argument("base", type=Path, metavar="BASE_DIR",
                     help="the baseline's runs: an artifacts root or a run directory")
    cmp.add_argument("new", type=Path, metavar="NEW_DIR", help="the new runs, the same way")
    cmp.add_argument("--format", choices=("text", "json"), default="text")
    rep = sub.add_parser("report", help="write a report of recorded runs")
    rep.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR",
                     help="a run directory, or an artifacts root holding several")
    rep.add_argument("--format", choices=REPORTERS.names(),
                     help="the reporter (`slatcheck reporters`; default text, or mail with "
                          "--mbox)")
    rep.add_argument("-o", "--output", type=Path, metavar="FILE",
                     help="write here (default: stdout)")
    rep.add_argument("--baseline", type=Path, metavar="DIR",
                     help="recorded runs of the baseline: their outcome per scenario")
    mail = rep.add_argument_group("mail (--format mail)")
    mail.add_argument("--from", dest="sender", default="", metavar="ADDRESS",
                      help="'Name <email>' (default: git config user.name/user.email)")
    mail.add_argument("--to", action="append", default=[], metavar="ADDRESS",
                      help="a recipient; may repeat")
    mail.add_argument("--cc", action="append", default=[], metavar="ADDRESS",
                      help="a copy recipient; may repeat")
    mail.add_argument("--subject", default="", help="the original subject (reply: Re: ...)")
    mail.add_argument("--in-reply-to", default="", metavar="MSGID")
    mail.add_argument("--references", action="append", default=[], metavar="MSGID",
                      help="an earlier message id of the thread, oldest first; may repeat")
    mail.add_argument("--mbox", type=Path, metavar="FILE",
                      help="write the mail as an mbox file (for git send-email)")


def cmd_compare(args: argparse.Namespace) -> int:
    """Compare two sides; print the text or JSON; 1 when something regressed."""
    from harness.compare import compare, load_side, render_text
    cmp = compare(load_side(args.base), load_side(args.new), str(args.base), str(args.new))
    if args.format == "json":
        print(json.dumps(cmp.to_json(), indent=2))
    else:
        print(render_text(cmp), end="")
    return cmp.exit_status


def _options(args: argparse.Namespace) -> ReportOptions:
    """The baseline (``--baseline``) and the mail headers of the command line."""
    from harness.compare import load_side
    from harness.reports.options import MailHeaders, ReportOptions
    baseline = None
    if args.baseline is not None:
        baseline = {rec.result.name: rec.result for rec in load_side(args.baseline)}
    return ReportOptions(baseline, MailHeaders(
        sender=args.sender, to=tuple(args.to), cc=tuple(args.cc), subject=args.subject,
        in_reply_to=args.in_reply_to, references=tuple(args.references)))


def _write(path: Path, write: Callable[[Path], None]) -> None:
    """*write* to *path*; a file that cannot be written is a usage error naming it."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(path)
    except OSError as e:
        raise ScenarioError(f"cannot write: {e.strerror or e}", file=str(path)) from None


def cmd_report(args: argparse.Namespace) -> int:
    """Write the report; 0 (the runs' outcomes are in the report, not the exit status)."""
    from harness.artifacts import write_text
    from harness.reporters import REPORTERS
    from harness.rundir import load_results
    fmt = args.format or ("mail" if args.mbox is not None else "text")
    if args.mbox is not None and fmt != "mail":
        raise ScenarioError(f"--mbox writes a mail, not {fmt}: leave out --format {fmt}")
    results = load_results(args.run_dirs)
    options = _options(args)
    if args.mbox is not None:            # one message, in the mbox and in -o FILE alike
        from harness.reports.mail import build_mail, write_mbox
        msg = build_mail(results, options)
        _write(args.mbox, lambda p: write_mbox(msg, p))
        if args.output is not None:
            _write(args.output, lambda p: write_text(p, msg.as_string()))
        return 0
    reporter = REPORTERS[fmt]
    render = reporter.render
    if render is None:
        if args.output is None:
            raise ScenarioError(f"the {fmt} report is a file: give -o FILE")
        _write(args.output, lambda p: reporter.write(results, p))
    elif args.output is not None:
        _write(args.output, lambda p: write_text(p, render(results, options)))
    else:
        sys.stdout.write(render(results, options))
    return 0
