"""This process's peak resident memory — the figure a Lambda function's memory limit applies to.

``VmHWM`` (Linux, ``/proc/self/status``) is the high-water mark of this address space only, so
a measuring subprocess does not inherit its (large) parent's peak the way ``ru_maxrss`` can.
Shared by the bench, the slow memory test and ``make demo-large``.
"""

from __future__ import annotations

import resource


def peak_kb() -> int:
    """Peak resident set size of this process, in kB (``ru_maxrss`` where /proc is absent)."""
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
