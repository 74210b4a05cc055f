"""The page's inline style sheet and script (no external asset: the page opens from a file).

The script draws each lane's GPA axis (page by page when zoomed in) and zooms a
lane's plot (a nested ``<svg class="plot">``) by changing its ``viewBox``: the
mouse wheel zooms around the pointer, a drag pans, a double click resets; the
buttons above a picture zoom all its lanes; a finding's "show" button zooms to its
marker.  The lane's range label follows what is shown.
"""

from __future__ import annotations

__all__ = ["CSS", "SCRIPT"]

CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1em 2em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.25em; margin-top: 2em; }
table { border-collapse: collapse; margin: .5em 0; }
th, td { border: 1px solid #ccc; padding: 2px 6px; text-align: left; vertical-align: top; }
td.num { text-align: right; }
pre { background: #f6f6f6; padding: .5em; overflow-x: auto; white-space: pre-wrap; }
code { background: #f6f6f6; }
.o-passed { background: #d8f0d0; } .o-xfailed { background: #d0ecec; }
.o-skipped { background: #eee; } .o-failed { background: #f8d0d0; }
.badge { padding: 1px 6px; border-radius: 3px; }
dl.prov { display: grid; grid-template-columns: max-content auto; gap: 0 1em; }
dl.prov dt { font-weight: bold; } dl.prov dd { margin: 0; }
.note { color: #666; }
.legend span { display: inline-block; margin-right: 1em; }
.legend i { display: inline-block; width: 1em; height: 1em; vertical-align: middle;
            margin-right: .3em; border: 1px solid #444; }
.legend i.unexpected { border: 2px dashed #000; background: #fff; }
.legend i.mark { background: rgba(214,39,40,.3); border: 2px solid #d62728; }
svg.gpamap { max-width: 1100px; display: block; user-select: none; }
svg.gpamap text { font: 11px monospace; fill: #333; }
svg.plot { cursor: grab; }
rect.lane-bg { fill: #fafafa; stroke: #999; stroke-width: 1px; vector-effect: non-scaling-stroke; }
rect.slot { fill: #eef3fa; }
rect.page { stroke: #333; stroke-width: .5px; vector-effect: non-scaling-stroke; }
rect.unexpected { stroke: #000; stroke-width: 2px; stroke-dasharray: 4 2; }
rect.mark { fill: rgba(214,39,40,.25); stroke: #d62728; stroke-width: 2px;
            vector-effect: non-scaling-stroke; }
rect.mark.hit { fill: rgba(214,39,40,.6); }
g.ticks line { stroke: #666; } g.ticks text { font-size: 10px; fill: #555; }
.zoom button { font: inherit; min-width: 2em; }
table.trend td.sq { width: 1.2em; height: 1.2em; padding: 0; text-align: center; font-size: 10px; }
td.sq.ok { background: #59a14f; } td.sq.bad { background: #d62728; }
td.sq.mixed { background: #f28e2b; } td.sq.skip { background: #ccc; }
td.sq.none { background: #fff; }
th.night { writing-mode: vertical-rl; font-weight: normal; font-size: 11px; }
svg.spark polyline { fill: none; stroke: #4e79a7; stroke-width: 1.5; }
svg.spark circle { fill: #4e79a7; }
svg.spark.rate polyline { stroke: #59a14f; } svg.spark.rate circle { fill: #59a14f; }
table.leaves td { font: 12px monospace; }
ul.artifacts { padding-left: 0; } ul.artifacts li { display: inline-block; margin-right: 1.2em; }
"""

SCRIPT = """
(function () {
  "use strict";
  var ROWS = 3, PAGE = 4096;
  var NS = "http://www.w3.org/2000/svg";
  function ticks(s, x, w) {   /* GPA labels under the plot; page by page when zoomed in */
    var g = s.parentNode.querySelector("g.ticks");
    while (g.firstChild) { g.removeChild(g.firstChild); }
    var step = 1;
    while (step * 8 < w) { step *= 2; }
    var left = s.x.baseVal.value, width = s.width.baseVal.value;
    var y = s.y.baseVal.value + s.height.baseVal.value, start = Number(s.dataset.start);
    for (var p = Math.ceil(x / step) * step; p <= x + w + 1e-9; p += step) {
      var at = left + (p - x) / w * width;
      var line = document.createElementNS(NS, "line");
      line.setAttribute("x1", at); line.setAttribute("x2", at);
      line.setAttribute("y1", y); line.setAttribute("y2", y + 4);
      var text = document.createElementNS(NS, "text");
      text.setAttribute("x", at); text.setAttribute("y", y + 14);
      text.setAttribute("text-anchor", "middle");
      text.textContent = "0x" + (start + p * PAGE).toString(16);
      g.appendChild(line); g.appendChild(text);
    }
  }
  function box(s) { return s.getAttribute("viewBox").split(" ").map(Number); }
  function show(s, x, w) {
    var n = Number(s.dataset.pages);
    w = Math.min(Math.max(w, 0.25), n);
    x = Math.min(Math.max(x, 0), n - w);
    s.setAttribute("viewBox", x + " 0 " + w + " " + ROWS);
    var label = s.parentNode.querySelector(".lane-range");
    var start = Number(s.dataset.start);
    var lo = Math.floor(start + x * PAGE), hi = Math.ceil(start + (x + w) * PAGE);
    label.textContent = "0x" + lo.toString(16) + " .. 0x" + hi.toString(16) +
      " (" + (Math.round(w * 100) / 100) + " of " + n + " pages)";
    ticks(s, x, w);
  }
  function frame(s) {   /* where the plot's viewport is on screen (not its content's box) */
    var outer = s.ownerSVGElement, r = outer.getBoundingClientRect();
    var k = r.width / outer.viewBox.baseVal.width;
    return {left: r.left + s.x.baseVal.value * k, width: s.width.baseVal.value * k};
  }
  function zoom(s, factor, at) {
    var v = box(s), w = v[2] * factor;
    show(s, v[0] + (v[2] - w) * at, w);
  }
  document.querySelectorAll("svg.plot").forEach(function (s) {
    show(s, 0, Number(s.dataset.pages));
    s.addEventListener("wheel", function (e) {
      e.preventDefault();
      var r = frame(s);
      var notches = e.deltaY * (e.deltaMode === 1 ? 33 : 1) / 100;   /* lines or pixels */
      zoom(s, Math.pow(2, Math.max(-3, Math.min(3, notches))), (e.clientX - r.left) / r.width);
    }, {passive: false});
    var drag = null;
    s.addEventListener("mousedown", function (e) {
      drag = {x: e.clientX, v: box(s)}; e.preventDefault();
    });
    window.addEventListener("mousemove", function (e) {
      if (!drag) { return; }
      show(s, drag.v[0] - (e.clientX - drag.x) / frame(s).width * drag.v[2], drag.v[2]);
    });
    window.addEventListener("mouseup", function () { drag = null; });
    s.addEventListener("dblclick", function () { show(s, 0, Number(s.dataset.pages)); });
  });
  document.addEventListener("click", function (e) {
    var b = e.target.closest("button[data-zoom]");
    if (!b) { return; }
    var what = b.dataset.zoom, scope = document.getElementById(b.dataset.target);
    if (!scope) { return; }
    if (what === "mark") {
      var m = scope.querySelector('rect.mark[data-gpa="' + CSS.escape(b.dataset.gpa) + '"]');
      if (!m) { return; }
      var s = m.closest("svg.plot"), mw = Number(m.getAttribute("width"));
      var w = Math.max(mw * 4, 4);                  /* the finding and its neighbours */
      show(s, Number(m.getAttribute("x")) + mw / 2 - w / 2, w);
      scope.querySelectorAll("rect.mark.hit").forEach(function (h) { h.classList.remove("hit"); });
      m.classList.add("hit");
      s.scrollIntoView({block: "center"});
      return;
    }
    scope.querySelectorAll("svg.plot").forEach(function (s) {
      if (what === "in") { zoom(s, 0.25, 0.5); }
      else if (what === "out") { zoom(s, 4, 0.5); }
      else { show(s, 0, Number(s.dataset.pages)); }
    });
  });
})();
"""
