"""The HTML report: one self-contained page to look at a night's (or a run's) results.

:func:`write_html` writes it (the ``html`` reporter, ``merge`` and ``report``);
:mod:`~harness.webreport.gpamap` draws a VM's GPA space, :mod:`~harness.webreport.trend`
the pass rate and duration over nights from :class:`HistoryRow` s,
:mod:`~harness.webreport.page` assembles the page.  All but :mod:`.write` are pure.
"""

from __future__ import annotations

from harness.webreport.trend import HistoryRow
from harness.webreport.write import page_path, write_html

__all__ = ["write_html", "page_path", "HistoryRow"]
