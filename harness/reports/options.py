"""What a report is given beside the results: the baseline's results, the mail's headers."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from harness.result import ScenarioResult

__all__ = ["ReportOptions", "MailHeaders"]


@dataclass(frozen=True)
class MailHeaders:
    """The headers of a reply (``slatcheck report --format mail``); empty means not given."""

    sender: str = ""                    # "Name <email>"; default: git's user.name/user.email
    to: tuple[str, ...] = ()
    cc: tuple[str, ...] = ()
    subject: str = ""                   # the original subject; the reply is "Re: <subject>"
    in_reply_to: str = ""               # the message id replied to, "<...@...>"
    references: tuple[str, ...] = ()    # the thread's earlier message ids, oldest first


@dataclass(frozen=True)
class ReportOptions:
    """The baseline's results by scenario name (``--baseline DIR``) and the mail headers."""

    baseline: Mapping[str, ScenarioResult] | None = None
    mail: MailHeaders = field(default_factory=MailHeaders)
