"""The results history: every scenario run appended to one SQLite store, and queries over it.

:mod:`~harness.history.inputs` reads what a run was run with (kernel, QEMU, machine)
out of its provenance; :mod:`~harness.history.store` keeps the rows (WAL mode, safe
for concurrent writers); :mod:`~harness.history.query` answers ``slatcheck history``
(pass rates, new, fixed and flaky) from the rows alone.
"""
