"""The nightly part of the command line: ``run``'s history and shard options, and the
``history`` and ``merge`` commands (see docs/nightly.md)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.errors import InfraError
from harness.result import ScenarioResult
from harness.scenario import Scenario

if TYPE_CHECKING:
    from harness.history.store import RunRow
    from harness.webreport.trend import HistoryRow

__all__ = ["add_run_options", "add_commands", "select_shard", "record", "cmd_history",
           "cmd_merge", "trend_rows"]


def _history_options(p: argparse._ActionsContainer, what: str) -> None:
    p.add_argument("--history", type=Path, metavar="PATH",
                   help=f"the history store {what} (default: $SLATCHECK_HISTORY, else "
                        "$XDG_CACHE_HOME/slatcheck/history.sqlite)")


def add_run_options(run: argparse.ArgumentParser) -> None:
    """``run``'s options: where its rows go, its night, its shard."""
    g = run.add_argument_group("nightly runs")
    _history_options(g, "to append to")
    g.add_argument("--no-history", action="store_true", help="record nothing in a history")
    g.add_argument("--night", metavar="LABEL",
                   help="the night label of this run's rows (default: the UTC date)")
    g.add_argument("--shard", metavar="I/N",
                   help="run only the I-th of N shards (balanced by the history's durations)")


def add_commands(sub: Any) -> None:
    """The ``history`` and ``merge`` subcommands."""
    h = sub.add_parser("history", help="pass rates, new, fixed and flaky findings per scenario")
    _history_options(h, "to read")
    h.add_argument("--scenario", metavar="S", help="only scenario S")
    h.add_argument("--format", choices=("text", "json"), default="text")
    h.add_argument("--html", type=Path, metavar="FILE",
                   help="also write the trend page (pass rate and duration per scenario "
                        "over nights) as a self-contained HTML file")
    m = sub.add_parser("merge", help="join the outputs of shards into one run's")
    m.add_argument("out", type=Path, metavar="OUT_DIR")
    m.add_argument("shards", type=Path, nargs="+", metavar="SHARD_DIR",
                   help="a shard's artifacts directory (or a shard's history .sqlite file)")
    m.add_argument("--junit", default="junit.xml", metavar="NAME",
                   help="the JUnit file's name in each shard directory (junit.xml)")
    _history_options(m, "the shards' rows are added to")
    m.add_argument("--no-history", action="store_true", help="leave the shards' rows out")


def _store(args: argparse.Namespace) -> Path | None:
    from harness.history.store import history_path
    return history_path(args.history, getattr(args, "no_history", False))


def select_shard(args: argparse.Namespace, scenarios: list[Scenario]
                 ) -> tuple[list[Scenario], dict[str, Any] | None]:
    """The scenarios of ``--shard I/N`` and the shard's record for summary.json."""
    if not args.shard:
        return scenarios, None
    from harness.history.record import night_label
    from harness.history.store import durations, open_store, read_rows
    from harness.shard import parse_shard, select
    shard = parse_shard(args.shard)
    path = _store(args)
    known: dict[str, float] = {}
    if path is not None and path.is_file():
        with open_store(path) as conn:
            known = durations(read_rows(conn), before_night=night_label(args.night))
    mine = select([s.name for s in scenarios], shard, known)
    positions = [i for i, keep in enumerate(mine) if keep]
    print(f"shard {shard}: {len(positions)} of {len(scenarios)} scenario(s)"
          f"{' (balanced by the history)' if known else ''}", flush=True)
    return [scenarios[i] for i in positions], {"index": shard.index, "total": shard.total,
                                               "positions": positions}


def record(args: argparse.Namespace, results: list[ScenarioResult]) -> list[str]:
    """Append *results* to the history; a store that cannot be written is named on
    stderr and returned."""
    from harness.history.record import new_run, record_results
    path = _store(args)
    if path is None or not results:
        return []
    try:
        record_results(path, results, new_run(args.night))
    except InfraError as e:
        print(f"slatcheck: cannot record the history: {e}", file=sys.stderr)
        return [str(path)]
    return []


def trend_rows(rows: Sequence[RunRow], scenario: str | None = None) -> list[HistoryRow]:
    """The history's whole runs (not their iterations) as the HTML trend's rows."""
    from harness.webreport.trend import HistoryRow
    return [HistoryRow(r.night, r.scenario, r.verdict, r.duration, r.outcome) for r in rows
            if r.iteration == 0 and (scenario is None or r.scenario == scenario)]


def _trend_of(store: Path | None) -> list[HistoryRow] | None:
    """The trend rows of the history at *store*, if there is one."""
    from harness.history.store import open_store, read_rows
    if store is None or not store.is_file():
        return None
    with open_store(store) as conn:
        return trend_rows(read_rows(conn))


def cmd_history(args: argparse.Namespace) -> int:
    """``slatcheck history``: exit 1 when the latest night has something new failing."""
    from harness.history import query
    from harness.history.store import default_path, history_path, open_store, read_rows
    path = history_path(args.history) or default_path()
    if not path.is_file():
        raise InfraError(f"history {path}: no such file (no run recorded there yet)")
    with open_store(path) as conn:
        rows = read_rows(conn)
    hs = query.histories(rows, args.scenario)
    latest = query.latest_night(rows)
    if args.html is not None:
        from harness.webreport import write_html
        page = write_html([], args.html, trend=trend_rows(rows, args.scenario),
                          title="slatcheck history")
        print(f"trend page: {page}", file=sys.stderr)
    if args.format == "json":
        print(json.dumps(query.to_json(hs, latest), indent=2))
    else:
        print(query.to_text(hs, latest))
    return 1 if query.new_failing(hs) else 0


def cmd_merge(args: argparse.Namespace) -> int:
    """``slatcheck merge``: the merged summary's exit status (0: all came out as expected)."""
    from harness.merge import merge
    from harness.reporters import summary_table
    from harness.webreport import write_html
    store = _store(args)
    res = merge(args.out, args.shards, junit=args.junit, history=store)
    print(summary_table(res.results), flush=True)
    page = write_html(res.results, args.out / "index.html", trend=_trend_of(store),
                      title=f"slatcheck: {args.out.name}")
    print(f"report: {page}")
    print(f"merged {len(res.results)} run(s) from {len(args.shards)} shard(s) into {args.out}"
          + (f"; JUnit {res.junit}" if res.junit else "")
          + (f"; {res.history_rows} history row(s) from {len(res.stores)} store(s)"
             if res.stores else ""))
    return max((r.status for r in res.results), default=0)
