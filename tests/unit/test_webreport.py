"""The HTML report (no browser): the page of real recorded runs read back with html.parser.

Every scenario and finding is on the page, a hostile name or console line is text,
each VM picture has one rectangle per leaf of slat.json and one marker per finding,
the artifact links resolve, nothing is fetched from elsewhere; the trend view from
constructed history rows.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
from fakes import FakeWorld
from pagetree import Element, parse
from recorded import INJECT, KINDS, SCENARIO, record, record_all

from harness.cli import main
from harness.findings import Finding
from harness.reporters import REPORTERS
from harness.result import ScenarioResult
from harness.rundir import load_results
from harness.webreport import HistoryRow, page_path, write_html
from harness.webreport.gpamap import MAX_RECTS, PERM_COLOURS, lanes_of, vm_svg
from harness.webreport.page import RunView, pictures, render
from harness.webreport.trend import cells, trend_html


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> list[ScenarioResult]:
    return record_all(tmp_path_factory.mktemp("rec") / "art")


def page_of(results: list[ScenarioResult], out: Path, **kw: Any) -> tuple[Path, Element]:
    path = write_html(results, out, **kw)
    return path, parse(path.read_text())


def test_every_scenario_and_finding_is_on_the_page(recorded: list[ScenarioResult],
                                                   tmp_path: Path) -> None:
    results = load_results([recorded[0].artifacts.parent])        # read back, as report does
    path, doc = page_of(results, tmp_path / "report")
    assert path == tmp_path / "report" / "index.html"
    rows = doc.by_id("verdicts").iter("tr", "run")
    assert [r.attrs["data-scenario"] for r in rows] == sorted(f"rec-{k}" for k in KINDS)
    by_name = {r.attrs["data-scenario"]: r for r in rows}
    for res in results:
        row = by_name[res.name]
        assert row.attrs["data-verdict"] == res.verdict and res.outcome in row.text
        assert f"{res.duration:.1f} s" in row.text
        assert "fake 0 tcg max" in row.text and "6.1.0-fake" in row.text   # provenance
    findings = doc.iter("tr", "finding")
    want = [f for r in results for f in r.findings_json()]
    assert len(findings) == len(want) == 2                   # xfail's and fail's wrong frame
    for row, f in zip(findings, want, strict=True):
        assert row.attrs["data-signature"] == f["signature"]
        for key in ("gpa", "expected", "observed", "raw", "entry", "title"):
            assert f[key] in row.text
    commands = [p.text for p in doc.iter("pre", "cmd")]
    assert any("slatcheck run" in c and "rec-fail.yaml" in c for c in commands)


def test_a_hostile_name_console_line_and_finding_are_text(recorded: list[ScenarioResult],
                                                          tmp_path: Path) -> None:
    evil = "<script>alert(1)</script>"
    fail = next(r for r in recorded if r.name == "rec-fail")
    run_dir = tmp_path / "evil-run"
    run_dir.mkdir()
    (run_dir / "console.log").write_text(f"login: root\n</pre>{evil}\n")
    bad = replace(fail, name=evil, message='"><img src=x onerror=alert(2)>', artifacts=run_dir,
                  findings=[Finding("panic", evil, None, "", "", detail=evil)],
                  provenance=fail.provenance | {"command": ["slatcheck", "run", evil]})
    path, doc = page_of([bad], tmp_path / "evil.html")
    assert len(doc.iter("script")) == 1 and not doc.iter("img")   # only the page's own
    assert doc.iter("tr", "run")[0].attrs["data-scenario"] == evil
    assert evil in doc.iter("pre", "console")[0].text
    assert evil in doc.iter("tr", "finding")[0].text
    assert "&lt;script&gt;" in path.read_text()


def test_a_hostile_slat_json_is_text(recorded: list[ScenarioResult]) -> None:
    evil = "<script>alert(3)</script>"
    slat = json.loads((recorded[0].artifacts / "slat.json").read_text())
    vm = slat["vms"][0] | {"vm": evil, "observed_as": evil, "format": evil, "findings": evil}
    vm["slots"] = [{"id": evil, "gpa": "0x0", "size": "0x10000", "kind": evil, "flags": evil}]
    vm["mappings"] = [m | {"raw": evil, "entry": evil} for m in vm["mappings"]]
    bad = {"vm": evil, "gpa": "0x2000", "kind": evil, "title": evil}
    view = RunView(recorded[0], findings=(bad,), slat={"vms": [vm], "checks": [
        {"step": "", "vms": [vm]}]}, slat_source=evil)
    doc = parse(render([view]))
    assert len(doc.iter("script")) == 1
    assert evil in doc.iter("g", "lane")[0].text and evil in doc.iter("table", "leaves")[0].text
    assert doc.iter("rect", "mark")[0].attrs["data-kind"] == evil


def test_each_picture_counts_the_leaves_and_findings_of_slat_json(
        recorded: list[ScenarioResult], tmp_path: Path) -> None:
    _, doc = page_of(recorded, tmp_path / "r")
    for i, res in enumerate(recorded):
        slat = json.loads((res.artifacts / "slat.json").read_text())
        svgs = doc.by_id(f"run-{i}").iter("svg", "gpamap")
        assert len(svgs) == len(pictures(slat))
        for svg, (step, vm) in zip(svgs, pictures(slat), strict=True):
            marks = [f for f in res.findings if f.vm == vm["vm"] and f.step == step]
            assert len(svg.iter("rect", "page")) == len(vm["mappings"]) \
                == int(svg.attrs["data-leaves"])
            assert len(svg.iter("rect", "mark")) == len(marks) == int(svg.attrs["data-marks"])
    fail = doc.by_id(f"run-{[r.name for r in recorded].index('rec-fail')}")
    mark = fail.iter("rect", "mark")[0]
    assert mark.attrs["data-gpa"] == "0x2000" and mark.attrs["x"] == "2"     # page 2 of slot 0
    assert [p.attrs["data-gpa"] for p in fail.iter("rect", "page")] == ["0x0", "0x2000", "0x3000"]


def test_a_picture_follows_its_data(recorded: list[ScenarioResult]) -> None:
    """Corruption shows: a leaf dropped from slat.json is a rectangle less, a finding's
    GPA moved is a marker moved."""
    slat = json.loads((recorded[0].artifacts / "slat.json").read_text())
    vm = slat["vms"][0]
    whole = parse(vm_svg(vm, [], "a"))
    less = parse(vm_svg(vm | {"mappings": vm["mappings"][1:]}, [], "a"))
    assert len(less.iter("rect", "page")) == len(whole.iter("rect", "page")) - 1
    f = {"vm": vm["vm"], "gpa": "0x3000", "kind": "missing", "title": "t"}
    assert parse(vm_svg(vm, [f], "a")).iter("rect", "mark")[0].attrs["x"] == "3"
    assert not parse(vm_svg(vm, [f | {"vm": "other"}], "a")).iter("rect", "mark")


def leaf(gpa: int, size: int = 0x1000, perm: str = "rw-", level: int = 1) -> dict[str, Any]:
    return {"gpa": hex(gpa), "hpa": hex(0x100000000 + gpa), "size": hex(size),
            "r": "r" in perm, "w": "w" in perm, "x": "x" in perm, "level": level,
            "raw": f"{gpa | 7:#018x}"}


HUGE_VM = {
    "vm": "w1/vm0",
    "slots": [{"id": 0, "gpa": "0x0", "size": "0x400000", "hva": "0x7f0000000000",
               "flags": "huge"},
              {"id": 1, "gpa": "0x40000000", "size": "0x40000000", "hva": "0x7f8000000000",
               "flags": ""}],
    "mappings": [leaf(0x1000, perm="r--"), leaf(0x200000, 0x200000, "r-x", 2),
                 leaf(0x40000000, 0x40000000, "rwx", 3),
                 leaf(0x9_0000_0000), leaf(0x9_0000_1000, perm="--x")],
}


def test_lanes_place_slots_sizes_permissions_and_what_lies_outside() -> None:
    finding = {"vm": "w1/vm0", "gpa": "0x123450000", "kind": "leftover", "title": "gone"}
    lanes = lanes_of(HUGE_VM, [finding])
    assert [ln.label for ln in lanes] == [
        "slot 0: 0x0-0x400000 (4M) huge", "slot 1: 0x40000000-0x80000000 (1G)",
        "outside every slot: 0x123450000-0x123451000",
        "outside every slot: 0x900000000-0x900002000"]
    assert [len(ln.leaves) for ln in lanes] == [2, 1, 0, 2]
    assert [len(ln.marks) for ln in lanes] == [0, 0, 1, 0]
    assert all(lf.unexpected for lf in lanes[3].leaves)
    assert not any(lf.unexpected for ln in lanes[:2] for lf in ln.leaves)
    doc = parse(vm_svg(HUGE_VM, [finding], "v"))
    rects = doc.iter("rect", "page")
    assert [(r.attrs["y"], r.attrs["fill"]) for r in rects] == [
        ("2", PERM_COLOURS["r--"]), ("1", PERM_COLOURS["r-x"]), ("0", PERM_COLOURS["rwx"]),
        ("2", PERM_COLOURS["rw-"]), ("2", PERM_COLOURS["--x"])]
    assert [r.attrs["width"] for r in rects[:3]] == ["1", "512", "262144"]   # in pages
    assert len(doc.iter("rect", "unexpected")) == 2
    plots = doc.iter("svg", "plot")
    assert [p.attrs["viewbox"] for p in plots] == [          # html.parser lowers names
        "0 0 1024 3", "0 0 262144 3", "0 0 1 3", "0 0 2 3"]
    assert "0x40000000-0x80000000 1G -> 0x140000000 rwx level 3" in rects[2].text


def test_slot_labels_name_kind_and_flags() -> None:
    slots = [{"id": 3, "gpa": "0x0", "size": "0x1000", "flags": 2},
             {"id": 4, "gpa": 0x100000, "size": 0x100000, "kind": "mmio", "flags": ["ro"]}]
    assert [ln.label for ln in lanes_of({"vm": "v", "slots": slots}, [])] == [
        "slot 3: 0x0-0x1000 (4K) flags 0x2", "slot 4: 0x100000-0x200000 (1M) mmio ro"]


def test_without_slots_every_mapping_has_a_lane_and_none_is_unexpected() -> None:
    vm = {"vm": "v", "slots": [], "mappings": [leaf(0x0), leaf(0x5000), leaf(0x80000000)]}
    lanes = lanes_of(vm, [])
    assert [ln.label.split(":")[0] for ln in lanes] == ["mappings (no memory slots recorded)"] * 2
    assert not any(lf.unexpected for ln in lanes for lf in ln.leaves)
    assert "no mappings" in vm_svg({"vm": "empty"}, [], "e")


def test_a_huge_vm_draws_contiguous_alike_leaves_as_one() -> None:
    n = MAX_RECTS + 10
    vm = {"vm": "big", "slots": [{"id": 0, "gpa": "0x0", "size": hex(n * 0x1000)}],
          "mappings": [leaf(g * 0x1000, perm="rw-" if g < 100 else "r--") for g in range(n)]}
    doc = parse(vm_svg(vm, [], "big"))
    rects = doc.iter("rect", "page")
    assert [r.attrs["data-n"] for r in rects] == ["100", str(n - 100)]
    assert doc.iter("svg", "gpamap")[0].attrs["data-coalesced"] == "true"


def test_links_resolve_and_nothing_is_fetched_from_elsewhere(
        recorded: list[ScenarioResult], tmp_path: Path) -> None:
    path, doc = page_of(recorded, tmp_path / "deep" / "page.html")
    links = [a.attrs["href"] for a in doc.iter("a")]
    files = [h for h in links if not h.startswith("#")]
    assert len(files) >= 5 * len(recorded)
    for href in files:
        assert "://" not in href and not href.startswith("/")
        assert (path.parent / unquote(href)).exists(), href
    for name in ("console.log", "result.json", "findings.json", "slat.json"):
        assert any(h.endswith(f"rec-fail/{name}") for h in files)
    assert not [e for e in doc.iter() if e.attrs.get("src") or e.tag == "link"]
    assert "@import" not in path.read_text() and "url(" not in path.read_text()


def test_a_repeated_run_names_its_reproducer(recorded: list[ScenarioResult]) -> None:
    res = replace(recorded[2], repeat={"text": "1/20 failed", "failures": [
        {"iteration": 17, "seed": 99, "reproducer": "art/x/iter-0017/reproducer.yaml"}]})
    doc = parse(render([RunView(res)]))
    commands = [p.text for p in doc.iter("pre", "cmd")]
    assert "slatcheck run art/x/iter-0017/reproducer.yaml" in commands
    assert "slatcheck shrink art/x/iter-0017/reproducer.yaml" in commands
    assert "1/20 failed" in doc.iter("tr", "run")[0].text


def test_a_real_repeated_run_shows_its_first_failing_iteration(tmp_path: Path) -> None:
    src = tmp_path / "s.yaml"
    src.write_text(SCENARIO.format(name="rep", expect="", inject=INJECT))
    world = FakeWorld(touched=(0x2000, 0x3000))
    status = main(["run", str(src), "--repeat", "3", "--artifacts", str(tmp_path / "art"),
                   "-q", "--report", f"html={tmp_path / 'r.html'}"],
                  services=world.services(tmp_path))
    assert status == 1
    doc = parse((tmp_path / "r.html").read_text())
    heading = [h.text for h in doc.iter("h3") if h.text.startswith("GPA space")]
    assert heading and "iteration 1 (seed " in heading[0] and "iter-0001/slat.json" in heading[0]
    assert len(doc.iter("rect", "page")) == 3 and len(doc.iter("rect", "mark")) == 1
    assert len(doc.iter("tr", "finding")) == 3                    # one per failing iteration
    commands = [p.text for p in doc.iter("pre", "cmd")]
    assert any(c.startswith("slatcheck shrink ") and "iter-0001" in c for c in commands)
    assert "iter-0001/" in [a.text for a in doc.iter("a")]


def test_the_trend_view_from_history_rows() -> None:
    rows = [HistoryRow("2026-11-29", "smoke", "pass", 10.0),
            HistoryRow("2026-11-30", "smoke", "pass", 12.0),
            HistoryRow("2026-11-30", "smoke", "fail", 14.0),
            HistoryRow("2026-12-01", "smoke", "fail", 9.0),
            HistoryRow("2026-11-30", "inject", "fail", 5.0, outcome="xfailed"),
            HistoryRow("2026-12-01", "inject", "skip", 1.0),
            HistoryRow("2026-12-01", "<b>x</b>", "error", 3.0)]
    c = cells(rows)
    assert (c[("smoke", "2026-11-30")].passed, c[("smoke", "2026-11-30")].runs) == (1, 2)
    assert c[("smoke", "2026-11-30")].duration == 13.0
    assert c[("inject", "2026-12-01")].rate is None
    doc = parse(trend_html(rows))
    trs = {tr.attrs["data-scenario"]: tr for tr in doc.iter("tr", "trend-row")}
    assert sorted(trs) == ["<b>x</b>", "inject", "smoke"] and not doc.iter("b")
    squares = [td.attrs["class"].split()[1] for td in trs["smoke"].iter("td", "sq")]
    assert squares == ["ok", "mixed", "bad"]
    assert [td.attrs["class"].split()[1] for td in trs["inject"].iter("td", "sq")] == \
        ["none", "ok", "skip"]
    assert "1/2 passed, 13.0 s" in trs["smoke"].iter("td", "sq")[1].attrs["title"]
    assert trs["smoke"].iter("td", "rate")[0].text == "50 %"
    assert trs["smoke"].iter("span", "last")[0].text == "9.0 s"      # the latest night
    assert "0 % on 2026-12-01 (from 100 % on 2026-11-29)" in \
        doc.iter("p", "suite-rate")[0].text           # the skip counts in no rate
    assert len(trs["smoke"].iter("circle")) == 3
    assert "no history" in trend_html([])


def test_the_page_with_a_trend(recorded: list[ScenarioResult], tmp_path: Path) -> None:
    rows = [HistoryRow(f"2026-11-{d:02d}", "rec-pass", "pass", 1.0) for d in range(1, 31)]
    _, doc = page_of(recorded[:1], tmp_path / "t", trend=rows)
    assert len(doc.iter("td", "sq")) == 30
    _, doc = page_of(recorded[:1], tmp_path / "n")
    assert not doc.iter("table", "trend")


def test_the_html_reporter_through_slatcheck_run(tmp_path: Path) -> None:
    src = tmp_path / "s.yaml"
    src.write_text(SCENARIO.format(name="cli-html", expect="", inject=""))
    world = FakeWorld(touched=(0x2000, 0x3000))
    status = main(["run", str(src), "--artifacts", str(tmp_path / "art"), "-q",
                   "--report", f"html={tmp_path / 'html'}"], services=world.services(tmp_path))
    assert status == 0
    doc = parse(page_path(tmp_path / "html").read_text())
    assert doc.iter("tr", "run")[0].attrs["data-scenario"] == "cli-html"
    assert len(doc.iter("rect", "page")) == 3
    REPORTERS["html"].write([], tmp_path / "empty.html")
    assert "0 runs" in (tmp_path / "empty.html").read_text()


def test_a_damaged_slat_json_is_named_not_fatal(tmp_path: Path) -> None:
    res = record("pass", tmp_path / "art")
    (res.artifacts / "slat.json").write_text("{not json")
    _, doc = page_of([res], tmp_path / "r")
    assert "slat.json" in doc.iter("p", "problem")[0].text
    assert not doc.iter("svg", "gpamap") and doc.iter("tr", "run")


def test_the_page_reader_refuses_a_misnested_page() -> None:
    """The checks above read pages with :func:`pagetree.parse`; it must not swallow bad HTML."""
    with pytest.raises(AssertionError, match="closes <b>"):
        parse("<p><b>bold</p></b>")
    with pytest.raises(AssertionError, match="unclosed"):
        parse("<section><table>")
