"""The report page, assembled from run views: pure (text in, text out; no file is read).

:class:`RunView` is what the page shows of one run: its result, its findings rows
(``findings.json`` form, with signature and title), its extracted state
(``slat.json``), where its run directory is relative to the page and the files in
it, and its console's last lines.  :func:`render` makes the whole page; every
value from a run is escaped, so a scenario named ``<script>`` is text.
"""

from __future__ import annotations

import shlex
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape
from typing import Any
from urllib.parse import quote

from harness.result import ScenarioResult
from harness.webreport.assets import CSS, SCRIPT
from harness.webreport.gpamap import PERM_COLOURS, leaf_table, vm_svg
from harness.webreport.trend import HistoryRow, trend_html

__all__ = ["RunView", "render", "pictures", "machine_of", "kernel_of", "reproduce"]

MAX_PICTURES = 24          # VM pictures per run (a long repeated run checks many times)


@dataclass(frozen=True)
class RunView:
    """One run as the page shows it."""

    result: ScenarioResult
    findings: tuple[dict[str, Any], ...] = ()   # findings.json rows
    slat: dict[str, Any] | None = None          # slat.json, None when the run has none
    href: str | None = None                     # run directory relative to the page
    files: tuple[str, ...] = ()                 # in the run directory ("iter-0003/" a dir)
    console_tail: tuple[str, ...] = ()
    problems: tuple[str, ...] = ()              # what could not be read (named, not fatal)
    slat_source: str = ""                       # where slat came from, when not the run's
    slat_findings: tuple[dict[str, Any], ...] | None = None   # and that place's findings


def _e(v: Any) -> str:
    return escape("" if v is None else str(v))


def _link(href: str | None, name: str, text: str | None = None) -> str:
    if href is None:
        return _e(text or name)
    url = quote(f"{href}/{name}" if href not in ("", ".") else name or "./")
    return f'<a href="{escape(url)}">{_e(text or name)}</a>'


def machine_of(res: ScenarioResult) -> str:
    """``qemu 7.2.0 tcg max, warm`` from the run's provenance."""
    m = res.provenance.get("machine") or {}
    parts = [m.get("emulator"), m.get("version"), m.get("accel"), m.get("cpu")]
    text = " ".join(str(p) for p in parts if p)
    return text + (f", {m['start']}" if m.get("start") else "")


def kernel_of(res: ScenarioResult) -> str:
    """The L1 kernel release the run booted."""
    p = res.properties
    return p.get("image.kernel_release") or p.get("guest.uname") or ""


def reproduce(res: ScenarioResult) -> list[tuple[str, str]]:
    """(what, command) pairs that run this again: as run, alone, its reproducer."""
    out = []
    cmd = res.provenance.get("command")
    if cmd:
        out.append(("as run", shlex.join(str(c) for c in cmd)))
    out.append(("this scenario alone", shlex.join(["slatcheck", "run", str(res.path)])))
    for f in (res.repeat or {}).get("failures", [])[:1]:
        if f.get("reproducer"):
            out.append((f"iteration {f.get('iteration')} (seed {f.get('seed')})",
                        shlex.join(["slatcheck", "run", f["reproducer"]])))
            out.append(("the smallest that still fails",
                        shlex.join(["slatcheck", "shrink", f["reproducer"]])))
    return out


def _verdict_row(i: int, v: RunView) -> str:
    r = v.result
    repeat = f" ({r.repeat['text']})" if r.repeat and r.repeat.get("text") else ""
    cells = [("", f'<a href="#run-{i}">{_e(r.name)}</a>'), ("", _e(r.verdict + repeat)),
             ("", _e(r.outcome)), ("num", f"{r.duration:.1f} s"), ("", _e(r.failed_step)),
             ("num", str(len(v.findings))), ("", _e(machine_of(r))), ("", _e(kernel_of(r))),
             ("", _link(v.href, "", "run directory") if v.href is not None else "")]
    tds = "".join(f'<td class="{c}">{h}</td>' if c else f"<td>{h}</td>" for c, h in cells)
    return (f'<tr class="run o-{_e(r.outcome)}" data-scenario="{_e(r.name)}" '
            f'data-verdict="{_e(r.verdict)}">{tds}</tr>')


def _verdict_table(views: Sequence[RunView]) -> str:
    head = "".join(f"<th>{h}</th>" for h in ("scenario", "verdict", "outcome", "time",
                                              "failed step", "findings", "machine",
                                              "kernel", "artifacts"))
    rows = "\n".join(_verdict_row(i, v) for i, v in enumerate(views))
    return f'<table class="verdicts" id="verdicts"><tr>{head}</tr>\n{rows}\n</table>'


def _provenance(res: ScenarioResult) -> str:
    p = res.provenance
    sc, host = p.get("slatcheck") or {}, p.get("host") or {}
    items = [("slatcheck", " ".join(str(x) for x in (sc.get("version"), sc.get("commit")) if x)),
             ("machine", machine_of(res)), ("L1 kernel", kernel_of(res)),
             ("hypervisor", res.hypervisor),
             ("host", " ".join(str(x) for x in (host.get("kernel"), host.get("cpu")) if x)),
             ("started", p.get("timestamp")), ("scenario file", str(res.path)),
             ("phases", ", ".join(f"{k} {v:.2f} s" for k, v in res.phases.items()))]
    return '<dl class="prov">' + "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>"
                                         for k, v in items if v) + "</dl>"


FINDING_COLUMNS = ("kind", "title", "VM", "GPA", "expected", "observed", "level", "entry",
                   "raw", "table", "detail", "step", "")


def _gpa(row: dict[str, Any]) -> str:
    gpa = row.get("gpa")
    return "" if gpa is None else f"{gpa}-{row['end']}" if row.get("end") else str(gpa)


def _findings(i: int, v: RunView) -> str:
    if not v.findings:
        return '<p class="note">no findings</p>'
    rows = []
    for f in v.findings:
        show = (f'<button data-zoom="mark" data-target="run-{i}" data-gpa="{_e(f.get("gpa"))}">'
                f"show</button>" if f.get("gpa") is not None else "")
        cells = [f.get("kind"), f.get("title"), f.get("vm"), _gpa(f), f.get("expected"),
                 f.get("observed"), f.get("level"), f.get("entry"), f.get("raw"),
                 f.get("table"), f.get("detail"), f.get("step")]
        rows.append(f'<tr class="finding" data-signature="{_e(f.get("signature"))}">'
                    + "".join(f"<td>{_e(c)}</td>" for c in cells) + f"<td>{show}</td></tr>")
    head = "".join(f"<th>{h}</th>" for h in FINDING_COLUMNS)
    return f'<table class="findings"><tr>{head}</tr>\n' + "\n".join(rows) + "</table>"


def pictures(slat: dict[str, Any] | None) -> list[tuple[str, dict[str, Any]]]:
    """(check step, VM) of every VM every check saw; the top-level VMs when no checks."""
    if not slat:
        return []
    checks = slat.get("checks")
    if checks is None:
        return [("", vm) for vm in slat.get("vms") or []]
    return [(str(c.get("step", "")), vm) for c in checks for vm in c.get("vms") or []]


def _vm_section(i: int, k: int, step: str, vm: dict[str, Any],
                findings: Sequence[dict[str, Any]]) -> str:
    mine = [f for f in findings if not step or not f.get("step") or f.get("step") == step]
    sid = f"run-{i}-vm-{k}"
    head = (f'<h3>{_e(vm.get("vm"))} <span class="note">({_e(vm.get("observed_as"))}, '
            f'{_e(vm.get("format"))}, root {_e(vm.get("root"))}; {_e(step)}; '
            f'{len(vm.get("mappings") or [])} leaves, {_e(vm.get("findings", 0))} findings)'
            f"</span></h3>")
    zoom = ('<div class="zoom">' + "".join(
        f'<button data-zoom="{z}" data-target="{sid}">{t}</button>'
        for z, t in (("in", "+"), ("out", "&minus;"), ("reset", "reset")))
        + " wheel: zoom, drag: pan, double click: whole lane</div>")
    table = (f"<details><summary>every leaf, page by page</summary>{leaf_table(vm)}"
             "</details>")
    return (f'<div class="vm" id="{sid}-box">{head}{zoom}{vm_svg(vm, mine, sid)}{table}'
            "</div>")


def _run_section(i: int, v: RunView) -> str:
    r = v.result
    parts = [f'<section class="run-detail o-{_e(r.outcome)}-border" id="run-{i}">',
             f'<h2><span class="badge o-{_e(r.outcome)}">{_e(r.verdict.upper())}</span> '
             f"{_e(r.name)}</h2>"]
    if r.message:
        parts.append(f'<pre class="message">{_e(r.message)}</pre>')
    parts += [f"<p class=\"problem\">{_e(p)}</p>" for p in v.problems]
    parts += [_provenance(r), "<h3>Reproduce</h3>"]
    parts += [f'<p>{_e(what)}:</p><pre class="cmd">{_e(cmd)}</pre>'
              for what, cmd in reproduce(r)]
    parts += ["<h3>Findings</h3>", _findings(i, v), "<h3>Artifacts</h3>"]
    if v.files:
        parts.append('<ul class="artifacts">' + "".join(
            f"<li>{_link(v.href, name)}</li>" for name in v.files) + "</ul>")
    else:
        parts.append('<p class="note">no run directory</p>')
    if v.console_tail:
        parts.append(f"<details><summary>console.log, last {len(v.console_tail)} lines"
                     f'</summary><pre class="console">{_e(chr(10).join(v.console_tail))}'
                     "</pre></details>")
    pics = pictures(v.slat)
    if pics:
        source = f" ({_e(v.slat_source)})" if v.slat_source else ""
        parts.append(f"<h3>GPA space of every checked VM{source}</h3>")
        marked = v.findings if v.slat_findings is None else v.slat_findings
        parts += [_vm_section(i, k, step, vm, marked)
                  for k, (step, vm) in enumerate(pics[:MAX_PICTURES])]
        if len(pics) > MAX_PICTURES:
            parts.append(f'<p class="note">{len(pics) - MAX_PICTURES} more checked VMs in '
                         f"slat.json</p>")
    parts.append("</section>")
    return "\n".join(parts)


def _legend() -> str:
    spans = "".join(f'<span><i style="background:{c}"></i>{_e(p)}</span>'
                    for p, c in PERM_COLOURS.items() if p not in ("-wx",))
    return ('<p class="legend">' + spans + '<span><i class="unexpected"></i>outside every '
            'slot</span><span><i class="mark"></i>finding</span> rows: 1G, 2M, 4K leaves; '
            "a lane per memory slot</p>")


def _suite(views: Sequence[RunView]) -> str:
    counts = Counter(v.result.outcome for v in views)
    versions = sorted({" ".join(str(x) for x in ((v.result.provenance.get("slatcheck") or {})
                                                   .get(k) for k in ("version", "commit")) if x)
                       for v in views} - {""})
    total = sum(v.result.duration for v in views)
    return (f'<p class="counts">{len(views)} runs: '
            + ", ".join(f"{n} {_e(k)}" for k, n in sorted(counts.items()))
            + f"; {total:.1f} s in all. slatcheck {_e('; '.join(versions))}</p>")


def render(views: Sequence[RunView], trend: Sequence[HistoryRow] | None = None,
           title: str = "slatcheck report", generated: str = "") -> str:
    """The whole self-contained page."""
    body = [f"<h1>{_e(title)}</h1>",
            f'<p class="note">generated {_e(generated)}</p>' if generated else "",
            _suite(views)]
    if trend is not None:
        body += ['<h2 id="trend">Trend</h2>', trend_html(trend)]
    body += ["<h2>Verdicts</h2>", _verdict_table(views), _legend()]
    body += [_run_section(i, v) for i, v in enumerate(views)]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{_e(title)}</title><style>{CSS}</style></head>\n<body>\n"
            + "\n".join(body) + f"\n<script>{SCRIPT}</script>\n</body></html>\n")
