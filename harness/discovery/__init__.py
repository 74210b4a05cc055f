"""Finding the live VMs and their nested roots from the L1 kernel's own data.

One module per (guest OS, hypervisor), each a pure ``discover(kmem, pmem,
symbols, types, ...)`` over :class:`~harness.mem.PhysMem` readers; the
observers (:mod:`harness.observe`) call them, and the
:data:`harness.hypervisors.HYPERVISORS` records name the observers.
"""
