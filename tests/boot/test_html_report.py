"""The HTML report in a real browser: Debian's headless Chromium, driven by selenium.

No VM boots: the runs are real run directories the runner wrote on the scripted
machine (tests/unit/recorded.py).  What is checked is what the browser shows: the
verdict rows, each VM picture laid out with a size and with one rectangle per leaf
of slat.json (read here with json, not with the report's code) and one marker per
finding, the script's zoom down to a single 4 KiB page, the artifact links, and no
error in the browser's console.  The page, its runs and screenshots stay under the
boot tier's artifacts (``<--slat-artifacts>/html-report/``).
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.actions.wheel_input import ScrollOrigin
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement

pytestmark = pytest.mark.boot

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "unit"))      # the recorded runs' maker and fakes
from recorded import KINDS, record_all  # noqa: E402

from harness.rundir import load_results  # noqa: E402
from harness.webreport import HistoryRow, write_html  # noqa: E402


def _tool(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} is missing: .ci/setup installs Debian's chromium and chromium-driver"
    return path


def fresh_report_dir(config: pytest.Config) -> Path:
    """A fresh ``html-report`` directory under the tier's artifacts, with recorded runs."""
    root = Path(config.getoption("--slat-artifacts")).resolve() / "html-report"
    shutil.rmtree(root, ignore_errors=True)
    record_all(root / "runs")
    return root


@pytest.fixture
def browser() -> Iterator[WebDriver]:
    opts = Options()
    opts.binary_location = _tool("chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,1000"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=opts, service=Service(_tool("chromedriver")))
    try:
        yield driver
    finally:
        driver.quit()


def write_page(out: Path) -> Path:
    """The page of the recorded runs, with a trend of 14 constructed nights."""
    nights = [f"2026-11-{d:02d}" for d in range(1, 15)]
    trend = [HistoryRow(n, f"rec-{k}", "pass" if (i + j) % 5 else "fail", 1.0 + i % 3)
             for i, n in enumerate(nights) for j, k in enumerate(KINDS)]
    return write_html(sorted(load_results([out / "runs"]), key=lambda r: r.name), out,
                      trend=trend)


def test_the_report_in_a_browser(request: pytest.FixtureRequest, browser: WebDriver) -> None:
    """One test, one page (the boot tier runs two workers: one directory, one writer)."""
    out = fresh_report_dir(request.config)
    page = write_page(out)
    browser.get(page.as_uri())
    check_verdict_rows(browser)
    check_vm_pictures(out, browser)
    check_zoom_reaches_a_single_page(page, browser)
    check_artifact_links_resolve(page, browser)
    check_no_errors_and_screenshot(page, browser)


def _box(driver: WebDriver, el: WebElement) -> dict[str, float]:
    box: dict[str, float] = driver.execute_script(
        "var r = arguments[0].getBoundingClientRect();"
        "return {x: r.x, y: r.y, width: r.width, height: r.height};", el)
    return box


def _plot_width(driver: WebDriver, plot: WebElement) -> float:
    """The plot's width on screen: its viewport, not the bounding box of its zoomed content."""
    width: float = driver.execute_script(
        "var s = arguments[0], o = s.ownerSVGElement;"
        "return s.width.baseVal.value * o.getBoundingClientRect().width"
        " / o.viewBox.baseVal.width;", plot)
    return width


def _viewbox(plot: WebElement) -> list[float]:
    return [float(v) for v in (plot.get_dom_attribute("viewBox") or "").split()]


def _section(driver: WebDriver, scenario: str) -> WebElement:
    row = driver.find_element(By.CSS_SELECTOR, f'#verdicts tr.run[data-scenario="{scenario}"]')
    anchor = row.find_element(By.TAG_NAME, "a").get_attribute("href") or ""
    return driver.find_element(By.ID, anchor.rsplit("#", 1)[1])


def check_verdict_rows(browser: WebDriver) -> None:
    rows = browser.find_elements(By.CSS_SELECTOR, "#verdicts tr.run")
    assert [r.get_attribute("data-scenario") for r in rows] == sorted(f"rec-{k}" for k in KINDS)
    outcome = {r.get_attribute("data-scenario"): r.find_elements(By.TAG_NAME, "td")[2].text
               for r in rows}
    assert outcome == {"rec-error": "failed", "rec-fail": "failed", "rec-pass": "passed",
                       "rec-skip": "skipped", "rec-xfail": "xfailed"}
    assert all(r.size["height"] > 0 for r in rows)
    assert len(browser.find_elements(By.CSS_SELECTOR, "table.trend td.sq")) == 14 * len(KINDS)


def check_vm_pictures(out: Path, browser: WebDriver) -> None:
    """Each VM picture is laid out, one rectangle per leaf and one marker per finding."""
    drawn = 0
    for run in sorted((out / "runs").iterdir()):
        slat = json.loads((run / "slat.json").read_text())
        findings = json.loads((run / "findings.json").read_text())
        vms = [(c["step"], vm) for c in slat["checks"] for vm in c["vms"]]
        svgs = _section(browser, run.name).find_elements(By.CSS_SELECTOR, "svg.gpamap")
        assert len(svgs) == len(vms), run.name
        for svg, (step, vm) in zip(svgs, vms, strict=True):
            box = _box(browser, svg)
            assert box["width"] > 500 and box["height"] > 40, (run.name, box)
            pages = svg.find_elements(By.CSS_SELECTOR, "rect.page")
            marks = svg.find_elements(By.CSS_SELECTOR, "rect.mark")
            assert len(pages) == len(vm["mappings"])
            assert len(marks) == len([f for f in findings
                                      if f["vm"] == vm["vm"] and f["step"] == step])
            assert all(_box(browser, p)["width"] > 0 for p in pages + marks)
            drawn += 1
    assert drawn == 3                          # pass, xfail, fail checked one VM each


def check_zoom_reaches_a_single_page(page: Path, browser: WebDriver) -> None:
    fail = _section(browser, "rec-fail")
    plot = fail.find_element(By.CSS_SELECTOR, "svg.plot")
    whole = _viewbox(plot)
    assert whole == [0, 0, 16, 3]                      # a 64 KiB slot: 16 pages
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", plot)
    mark = fail.find_element(By.CSS_SELECTOR, "rect.mark")
    for _ in range(4):                                  # wheel up over the finding's page
        ActionChains(browser).scroll_from_origin(ScrollOrigin.from_element(mark), 0, -100) \
            .perform()
    vb = _viewbox(plot)
    assert vb[2] == pytest.approx(1.0) and vb[0] < 2.5 < vb[0] + vb[2], vb   # about the pointer
    plot_w = _plot_width(browser, plot)
    assert _box(browser, mark)["width"] > 0.9 * plot_w         # one 4 KiB page fills it
    label = fail.find_element(By.CSS_SELECTOR, ".lane-range").text
    lo, hi = (int(x, 16) for x in re.findall(r"0x[0-9a-f]+", label)[:2])
    assert abs(lo - 0x1000 * vb[0]) <= 1 and abs(hi - lo - 0x1000) <= 1, label
    assert "of 16 pages" in label, label
    (Path(page).parent / "zoomed-page.png").write_bytes(
        fail.find_element(By.CSS_SELECTOR, "svg.gpamap").screenshot_as_png)
    ActionChains(browser).click_and_hold(plot).move_by_offset(-plot_w / 2, 0).release() \
        .perform()
    assert _viewbox(plot)[0] == pytest.approx(vb[0] + 0.5, abs=0.05)   # dragged half a page
    fail.find_element(By.CSS_SELECTOR, 'button[data-zoom="reset"]').click()
    assert _viewbox(plot) == whole
    fail.find_element(By.CSS_SELECTOR, 'button[data-zoom="in"]').click()
    assert _viewbox(plot)[2] == 4
    fail.find_element(By.CSS_SELECTOR, 'tr.finding button[data-zoom="mark"]').click()
    assert "hit" in (mark.get_attribute("class") or "")
    assert _viewbox(plot) == [0.5, 0, 4, 3]            # the finding's page and neighbours
    axis = [t.text for t in fail.find_elements(By.CSS_SELECTOR, "g.ticks text")[:8]]
    assert axis == ["0x1000", "0x2000", "0x3000", "0x4000"]    # page by page


def check_artifact_links_resolve(page: Path, browser: WebDriver) -> None:
    links = [a.get_attribute("href") or "" for a in browser.find_elements(By.TAG_NAME, "a")]
    files = [h for h in links if not h.split("#")[0] == page.as_uri()]
    assert len(files) > 30
    for href in files:
        url = urlparse(href)
        assert url.scheme == "file" and Path(unquote(url.path)).exists(), href
    names = {Path(unquote(urlparse(h).path)).name for h in files}
    assert {"console.log", "result.json", "findings.json", "slat.json"} <= names


def check_no_errors_and_screenshot(page: Path, browser: WebDriver) -> None:
    browser.get(page.as_uri())                         # afresh, scrolled to the top
    severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not severe, severe
    height = browser.execute_script("return document.body.scrollHeight")
    browser.set_window_size(1280, min(int(height) + 40, 16000))
    shot = page.parent / "screenshot.png"
    assert browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000


def test_the_browser_checks_catch_a_broken_page(tmp_path: Path, browser: WebDriver) -> None:
    """The checks above fail on a page with a leaf's rectangle gone or a link to nothing."""
    out = tmp_path / "html-report"
    record_all(out / "runs")
    page = write_page(out)
    text = page.read_text()
    page.write_text(re.sub(r'<rect class="page [^>]*>.*?</rect>', "", text, count=1))
    browser.get(page.as_uri())
    with pytest.raises(AssertionError):
        check_vm_pictures(out, browser)
    (out / "runs" / "rec-fail" / "console.log").unlink()
    with pytest.raises(AssertionError, match="console.log"):
        check_artifact_links_resolve(page, browser)
