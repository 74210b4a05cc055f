"""Reports of recorded runs, one small module per format, registered in
:data:`harness.reporters.REPORTERS`: ``text`` (the summary table and each failing
scenario's findings), ``tap`` (TAP version 13, as kselftest writes it) and ``mail``
(a reply to a patch, RFC 5322).  :mod:`~harness.reports.origin` says where a run came
from; :mod:`~harness.reports.table` is the summary table every text form shares.
"""
