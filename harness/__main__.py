"""``python -m harness`` is the ``slatcheck`` command."""

import sys

from harness.cli import main

sys.exit(main())
