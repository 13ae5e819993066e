"""The service comes first: how `capture` and `mirror` lower their own CPU priority.

When the CPUs are short, a lower-priority agent falls behind (a backlog in the kernel buffer or the
queue, then counted drops) instead of the watched service waiting for a core. SCHED_IDLE is the
strong form: a normal task preempts ours at once on wake-up and ours never preempts it, so the
service's tail latency does not see us; nice is the weak one (a niced task still wins some
wake-ups). Both are inherited by child processes forked afterwards.
"""

from __future__ import annotations

import os


def lower_priority(nice: int, sched_idle: bool) -> bool:
    """Add ``nice`` to this process's nice value and, with ``sched_idle``, move it to SCHED_IDLE
    (left as it is where the kernel refuses). True when the process runs under SCHED_IDLE."""
    if nice:
        os.nice(nice)
    if sched_idle and hasattr(os, "sched_setscheduler") and hasattr(os, "SCHED_IDLE"):
        try:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
            return True
        except OSError:
            pass
    return False
