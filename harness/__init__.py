"""slatcheck: differential verification of hypervisor nested paging (SLAT).

The package is split into a pure core (``formats``, ``models``, ``diff``,
``mem``) that needs no VM, and the machinery that boots guests and reads
their tables (``qemu``, ``console``, ``gdb``, ``discovery``, ``runner``).
"""

__version__ = "0.1.0"
