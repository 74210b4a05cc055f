"""Shards and merge: ``--shard I/N`` (CLI and pytest) runs every scenario exactly once
over the N shards, with and without durations in the history; ``merge`` gives back what
one unsharded run reports (summary.json, the JUnit test cases, the history rows)."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from kinds import run, scenario_files
from recorded import SCENARIO

from harness import cli
from harness.errors import ScenarioError
from harness.history.store import open_store, read_rows
from harness.shard import Shard, assign, parse_shard, select

pytest_plugins = ["pytester"]
HERE = Path(__file__).resolve().parent


def ran(art: Path) -> list[str]:
    return [r["scenario"] for r in json.loads((art / "summary.json").read_text())["scenarios"]]


# ---- the split -----------------------------------------------------------------------

@given(st.lists(st.text("abcdef-", min_size=1, max_size=6), max_size=30),
       st.integers(1, 7), st.booleans(), st.data())
def test_every_name_in_exactly_one_shard(names: list[str], total: int, timed: bool,
                                         data: st.DataObject) -> None:
    durations = {n: data.draw(st.floats(0, 1e4)) for n in names if timed and
                 data.draw(st.booleans())}
    picks = [select(names, Shard(i, total), durations) for i in range(1, total + 1)]
    for k, _ in enumerate(names):
        assert sum(p[k] for p in picks) == 1
    assert assign(names, total, durations) == assign(list(reversed(names)), total, durations)


def test_longest_first_onto_the_least_loaded() -> None:
    times = {"a": 8.0, "b": 7.0, "c": 6.0, "d": 5.0, "e": 4.0}
    where = assign(list(times), 2, times)
    loads = [sum(t for n, t in times.items() if where[n] == k) for k in (1, 2)]
    assert where == {"a": 1, "b": 2, "c": 2, "d": 1, "e": 1} and loads == [17.0, 13.0]
    # an unknown scenario costs the median of the known ones
    assert assign(["a", "b", "new"], 2, {"a": 10.0, "b": 1.0})["new"] == 2


@pytest.mark.parametrize("text", ["0/2", "3/2", "1", "a/b", "1/0", "-1/2"])
def test_a_bad_shard_is_a_usage_error(text: str) -> None:
    with pytest.raises(ScenarioError, match="I/N"):
        parse_shard(text)


# ---- the CLI -------------------------------------------------------------------------

@pytest.mark.parametrize("with_history", [False, True])
def test_cli_shards_cover_every_scenario_once(tmp_path: Path, with_history: bool) -> None:
    files = scenario_files(tmp_path / "src")
    db = tmp_path / "h.sqlite"
    if with_history:          # an earlier night's durations balance the split
        run(files, tmp_path / "before", "--history", str(db), "--night", "2026-11-30")
    shards = [ran_shard(files, tmp_path / f"s{i}", i, db) for i in (1, 2)]
    assert sorted(shards[0] + shards[1]) == sorted(p.stem for p in files)
    assert not set(shards[0]) & set(shards[1]) and all(shards)


def ran_shard(files: list[Path], art: Path, index: int, db: Path) -> list[str]:
    run(files, art, "--shard", f"{index}/2", "--history", str(db), "--night", "2026-12-01")
    return ran(art)


def test_merge_gives_back_the_unsharded_report(tmp_path: Path) -> None:
    files = scenario_files(tmp_path / "src")
    assert run(files, tmp_path / "all", "--history", str(tmp_path / "all.sqlite")) == 3
    for i in (1, 2):
        run(files, tmp_path / f"s{i}", "--shard", f"{i}/2",
            "--history", str(tmp_path / f"s{i}" / "history.sqlite"))
    merged = tmp_path / "merged"
    assert cli.main(["merge", str(merged), str(tmp_path / "s1"), str(tmp_path / "s2"),
                     "--history", str(tmp_path / "merged.sqlite")]) == 3
    assert comparable(merged) == comparable(tmp_path / "all")
    assert cases(merged / "junit.xml") == cases(tmp_path / "all" / "junit.xml")
    with open_store(tmp_path / "merged.sqlite") as a, open_store(tmp_path / "all.sqlite") as b:
        assert history_view(read_rows(a)) == history_view(read_rows(b))
    for p in sorted((tmp_path / "all").iterdir()):
        assert (merged / p.name).exists(), p.name
    page = (merged / "index.html").read_text()          # the night's page, with its trend
    assert all(f'data-scenario="{r["scenario"]}"' in page
               for r in comparable(merged)["scenarios"])
    assert '<h2 id="trend">Trend</h2>' in page


def comparable(art: Path) -> dict[str, Any]:
    """summary.json without what differs between two runs: times, the artifacts root."""
    data = json.loads((art / "summary.json").read_text())
    data.pop("duration")
    data.pop("shard", None)
    for row in data["scenarios"]:
        row.pop("duration")
        row["artifacts"] = Path(row["artifacts"]).name
    return data


def cases(path: Path) -> list[tuple[str, str, str]]:
    root = ET.parse(path).getroot()
    return [(c.get("classname", ""), c.get("name", ""),
             next((e.tag for e in c if e.tag in ("failure", "error", "skipped")), "passed"))
            for c in root.iter("testcase")]


def history_view(rows: list[Any]) -> list[tuple[str, str, int, tuple[Any, ...]]]:
    return sorted((r.scenario, r.verdict, r.iteration, r.findings) for r in rows)


def test_a_shard_may_be_empty_and_still_merges(tmp_path: Path) -> None:
    files = scenario_files(tmp_path / "src", copies=1)[:2]
    assert run(files, tmp_path / "s3", "--shard", "3/3") == 0
    assert ran(tmp_path / "s3") == []
    for i in (1, 2):
        run(files, tmp_path / f"s{i}", "--shard", f"{i}/3")
    cli.main(["merge", str(tmp_path / "m"), *(str(tmp_path / f"s{i}") for i in (1, 2, 3))])
    assert ran(tmp_path / "m") == ["rec-pass-0", "rec-xfail-0"]


def test_merge_of_a_missing_shard_is_a_usage_error(tmp_path: Path) -> None:
    assert cli.main(["merge", str(tmp_path / "m"), str(tmp_path / "nope")]) == 2


# ---- pytest --------------------------------------------------------------------------

CONFTEST = f'''
import sys
sys.path.insert(0, {str(HERE)!r})
from fakes import FakeWorld

def pytest_slatcheck_services(config):
    return FakeWorld(touched=(0x2000, 0x3000)).services(config.rootpath)
'''


@pytest.mark.parametrize("with_history", [False, True])
def test_pytest_shards_cover_every_item_once(pytester: pytest.Pytester,
                                             with_history: bool) -> None:
    pytester.makeconftest(CONFTEST)
    d = pytester.mkdir("scenarios")
    for n in range(5):
        (d / f"s{n}.yaml").write_text(SCENARIO.format(name=f"s{n}", expect="", inject=""))
    (d / "bad.yaml").write_text("name: bad\nsteps: []\n")   # sharded too: fails once
    db = pytester.path / "h.sqlite"
    base = ["scenarios", "-p", "no:cacheprovider", "--slat-artifacts", "art",
            "--slat-history", str(db)]
    if with_history:
        pytester.runpytest_inprocess(*base, "--slat-night", "2026-11-30").assert_outcomes(
            passed=5, failed=1)
    seen = []
    for i in (1, 2):
        res = pytester.runpytest_inprocess(*base, "--slat-shard", f"{i}/2", "-v",
                                           "--slat-night", "2026-12-01")
        got = [ln.split("::")[1].split()[0] for ln in res.outlines
               if ln.startswith("scenarios/") and ("PASSED" in ln or "FAILED" in ln)]
        bad = int("bad" in got)
        res.assert_outcomes(passed=len(got) - bad, failed=bad, deselected=6 - len(got))
        seen.append(got)
    assert sorted(seen[0] + seen[1]) == ["bad"] + [f"s{n}" for n in range(5)] and all(seen)
    with open_store(db) as conn:
        rows = read_rows(conn)
    assert len(rows) == (10 if with_history else 5)


def test_pytest_rejects_a_bad_shard(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(CONFTEST)
    res = pytester.runpytest_inprocess("--slat-shard", "3/2")
    assert res.ret == pytest.ExitCode.USAGE_ERROR
    assert "I/N" in res.stderr.str()
