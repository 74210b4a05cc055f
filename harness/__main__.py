"""``python -m harness`` is the ``slatcheck`` command."""

from harness.launch import entry

entry()
