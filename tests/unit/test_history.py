"""The results history: real recorded runs (tests/unit/recorded.py) appended night by night,
then what ``slatcheck history`` says of them: new, fixed and flaky findings, pass rates."""

from __future__ import annotations

import json
import multiprocessing
import sqlite3
from pathlib import Path

import pytest
from fakes import FakeWorld
from recorded import INJECT, SCENARIO, record

from harness import cli
from harness.errors import InfraError
from harness.history import query
from harness.history.inputs import inputs_of, kernel_identity
from harness.history.record import new_run, record_results
from harness.history.store import (
    copy_store,
    default_path,
    history_path,
    open_store,
    read_rows,
)
from harness.repeat import RepeatPlan, run_repeated
from harness.result import ScenarioResult
from harness.scenario import load_scenario

N1, N2, N3 = "2026-11-30", "2026-12-01", "2026-12-02"


def _night(db: Path, night: str, kind: str, tmp: Path, name: str = "nightly",
           kernel: dict[str, str] | None = None) -> ScenarioResult:
    res = record(kind, tmp / night / kind, name=name)
    if kernel is not None:
        res.provenance["kernel"] = kernel
    record_results(db, [res], new_run(night))
    return res


def _rows(db: Path) -> list[query.ScenarioHistory]:
    with open_store(db) as conn:
        return query.histories(read_rows(conn))


def test_an_injected_corruption_is_new_in_its_night_then_fixed(tmp_path: Path) -> None:
    db = tmp_path / "h.sqlite"
    _night(db, N1, "pass", tmp_path)
    bad = _night(db, N2, "fail", tmp_path)
    [h] = _rows(db)
    assert (h.runs, h.passed, h.failed, h.pass_rate) == (2, 1, 1, 0.5)
    assert (h.first_failure, h.last_failure, h.latest) == (N2, N2, "failed")
    assert h.last_passing_kernel == "6.1.0-fake"
    [f] = h.new
    assert f.signature == bad.findings_json()[0]["signature"]
    assert (f.first_night, f.kind, f.fixed) == (N2, "wrong_frame", False)
    assert h.flaky == ("nightly | 6.1.0-fake | 0 | fake max tcg",)   # same inputs, both
    assert query.new_failing([h])
    _night(db, N3, "pass", tmp_path)
    [h] = _rows(db)
    assert [(x.fixed, x.new, x.first_night, x.last_night) for x in h.findings] == \
        [(True, False, N2, N2)]
    assert not query.new_failing([h])


def test_a_finding_seen_before_with_the_same_inputs_is_not_new(tmp_path: Path) -> None:
    db = tmp_path / "h.sqlite"
    _night(db, N1, "fail", tmp_path)
    _night(db, N2, "fail", tmp_path)
    [h] = _rows(db)
    assert not h.new and not h.flaky and h.first_failure == N1
    assert not query.new_failing([h])
    # a new kernel: the same signature is new with these inputs; nothing flaky across kernels
    _night(db, N3, "fail", tmp_path, kernel={"release": "6.12.0", "describe": "v6.12-rc1"})
    [h] = _rows(db)
    assert [f.first_night for f in h.new] == [N1] and not h.flaky
    assert h.last_passing_kernel is None


def test_a_negative_scenarios_expected_findings_are_not_news(tmp_path: Path) -> None:
    db = tmp_path / "h.sqlite"
    _night(db, N1, "xfail", tmp_path, name="neg")
    [h] = _rows(db)
    assert (h.pass_rate, h.latest, h.findings) == (1.0, "xfailed", ())
    assert not query.new_failing([h])


def test_the_cli_records_each_night_and_history_exits_1_on_something_new(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "h.sqlite"
    src = tmp_path / "src"
    src.mkdir()
    good, bad = src / "good.yaml", src / "bad.yaml"
    good.write_text(SCENARIO.format(name="cli-nightly", expect="", inject=""))
    bad.write_text(SCENARIO.format(name="cli-nightly", expect="", inject=INJECT))
    for night, path in ((N1, good), (N2, bad)):
        world = FakeWorld(touched=(0x2000, 0x3000))
        cli.main(["run", str(path), "-q", "--night", night, "--history", str(db),
                  "--artifacts", str(tmp_path / night)], services=world.services(src))
    capsys.readouterr()
    assert cli.main(["history", "--history", str(db)]) == 1
    out = capsys.readouterr().out
    assert f"latest night: {N2}" in out and "pass rate 50 % (1/2" in out
    assert "NEW   " in out and "wrong_frame in w1/vm0 at GPA 0x2000 (level 1)" in out
    assert f"first {N2}" in out and "FLAKY" in out
    assert cli.main(["history", "--history", str(db), "--format", "json",
                     "--scenario", "cli-nightly"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["new_failing"] and data["scenarios"][0]["first_failure"] == N2
    assert cli.main(["history", "--history", str(db), "--scenario", "other"]) == 0
    assert cli.main(["history", "--history", str(db), "--html", str(tmp_path / "t.html")]) == 1
    page = (tmp_path / "t.html").read_text()
    assert 'data-scenario="cli-nightly"' in page and N1 in page and N2 in page


def test_no_history_records_nothing(tmp_path: Path) -> None:
    res = record("pass", tmp_path / "art")
    path = res.path
    db = tmp_path / "h.sqlite"
    cli.main(["run", str(path), "-q", "--no-history", "--history", str(db),
              "--artifacts", str(tmp_path / "b")],
             services=FakeWorld(touched=(0x2000, 0x3000)).services(tmp_path))
    assert not db.exists()


def test_where_the_store_is(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SLATCHECK_HISTORY")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "c"))
    assert history_path(None) == default_path() == tmp_path / "c/slatcheck/history.sqlite"
    assert history_path(tmp_path / "x") == tmp_path / "x"
    assert history_path(tmp_path / "x", off=True) is None
    monkeypatch.setenv("SLATCHECK_HISTORY", "off")
    assert history_path(None) is None
    monkeypatch.setenv("SLATCHECK_HISTORY", str(tmp_path / "e"))
    assert history_path(None) == tmp_path / "e"


def test_a_repeated_run_has_a_row_per_iteration(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(SCENARIO.format(name="rep", expect="", inject=INJECT))
    res = run_repeated(load_scenario(path), tmp_path / "art", RepeatPlan(count=3),
                       progress=lambda line: None,
                       services=FakeWorld(touched=(0x2000, 0x3000)).services(tmp_path))
    db = tmp_path / "h.sqlite"
    assert record_results(db, [res], new_run(N1)) == 4
    with open_store(db) as conn:
        rows = read_rows(conn)
    assert [(r.iteration, r.iterations, r.failed_iterations, r.verdict) for r in rows] == \
        [(0, 3, 3, "fail")] + [(i, 3, 3, "fail") for i in (1, 2, 3)]
    assert all(len(r.findings) == 1 and r.scenario == "rep" for r in rows)


def _append_many(db: str, worker: int) -> None:
    res = ScenarioResult(name=f"w{worker}", path=Path("x.yaml"), verdict="pass")
    for i in range(15):
        record_results(Path(db), [res], new_run(N1, run_id=f"{worker}-{i}"))


def test_concurrent_writers_lose_no_row(tmp_path: Path) -> None:
    db = tmp_path / "h.sqlite"
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_append_many, args=(str(db), w)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0] * 4
    with open_store(db) as conn:
        rows = read_rows(conn)
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert len(rows) == 60 and len({r.run_id for r in rows}) == 60


def test_a_store_merged_twice_adds_its_rows_once(tmp_path: Path) -> None:
    a, b = tmp_path / "a.sqlite", tmp_path / "b.sqlite"
    _night(a, N1, "fail", tmp_path)
    with open_store(b) as conn:
        assert copy_store(a, conn) == 1
        assert copy_store(a, conn) == 0
        [row] = read_rows(conn)
    assert row.findings and row.night == N1


def test_a_store_that_is_not_a_history_is_an_infra_error(tmp_path: Path) -> None:
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"not a database at all" * 100)
    with pytest.raises(InfraError, match="junk.sqlite"):
        with open_store(junk):
            pass
    other = tmp_path / "other.sqlite"
    with open_store(other):
        pass
    with sqlite3.connect(other) as conn:
        conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema'")
    with pytest.raises(InfraError, match="schema 99"):
        with open_store(other):
            pass


def test_kernel_identity_prefers_the_recorded_kernel() -> None:
    props = {"image.kernel_release": "6.1.0-28-amd64",
             "package.linux-image-6.1.0-28-amd64": "6.1.119-1 sha256:ab",
             "package.busybox-static": "1:1.35.0-4 sha256:cd"}
    assert kernel_identity({}, props) == \
        "6.1.0-28-amd64 linux-image-6.1.0-28-amd64=6.1.119-1"
    inp = inputs_of({"kernel": {"release": "6.13.0", "describe": "v6.13-5-gabc",
                                "config_sha256": "f" * 64},
                     "machine": {"emulator": "qemu", "version": "7.2.0", "accel": "tcg",
                                 "cpu": "max,-la57"}}, props)
    assert inp.kernel_id == "6.13.0 v6.13-5-gabc config:ffffffffffff"
    assert inp.packages == {"busybox-static": "1:1.35.0-4",
                            "linux-image-6.1.0-28-amd64": "6.1.119-1"}
    assert inp.key("s") == "s | 6.13.0 v6.13-5-gabc config:ffffffffffff | 7.2.0 | " \
        "qemu max,-la57 tcg"


@pytest.mark.parametrize("kernel, build", [
    ({"form": "package", "name": "linux-image-6.12.9+bpo-amd64-unsigned",
      "version": "6.12.9-1~bpo12+1", "release": "6.12.9+bpo-amd64"},
     "linux-image-6.12.9+bpo-amd64-unsigned=6.12.9-1~bpo12+1"),
    ({"form": "build-tree", "path": "/src/o", "release": "6.1.0", "git_describe": "v6.1-3-gab",
      "config_sha256": "e" * 64}, "v6.1-3-gab"),
    ({"form": "deb", "filename": "linux-image-x.deb", "sha256": "c" * 64,
      "package": "linux-image-x", "version": "1", "release": "6.1.0"}, "linux-image-x=1"),
    ({"form": "boot-image", "filename": "bzImage", "release": "6.1.0", "sha256": "d" * 64},
     "bzImage sha256:dddddddddddd"),
])
def test_kernel_identity_of_every_kernel_form(kernel: dict[str, str], build: str) -> None:
    """provenance.kernel as the image builder writes it (harness.images.kernel)."""
    identity = kernel_identity(kernel, {})
    assert identity.startswith(kernel["release"] + " " + build)
