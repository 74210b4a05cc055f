"""``python -m harness`` is the ``slatcheck`` command."""

from harness.cli import entry

entry()
