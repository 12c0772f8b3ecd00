"""Child processes that end with the process that started them.

``make run`` starts Redis and the services as child processes, each in a session of its own
so that a terminal's Ctrl-C reaches the supervisor alone. Should the supervisor be killed
outright (SIGKILL), nothing would stop them: they would keep the ports and the data folder
of the next run. On Linux the kernel sends them SIGTERM instead, as on an orderly stop.

Only for a parent that runs no gRPC: a ``preexec_fn`` makes ``subprocess`` fork the whole
process instead of spawning, and a child forked beside gRPC's threads can die in gRPC's fork
handlers before it runs anything.
"""

import ctypes
import functools
import os
import signal
import sys
from collections.abc import Callable

_PR_SET_PDEATHSIG = 1
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def ending_with_this_process() -> Callable[[], None]:
    """What to pass as ``subprocess.Popen(preexec_fn=...)`` so that the child gets SIGTERM
    when the thread starting it ends. Does nothing where the system offers no such signal."""
    return functools.partial(_end_with, os.getpid())


def _end_with(parent: int) -> None:
    # Runs in the child, between fork and exec.
    if _LIBC is None:
        return

    _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:
        # The parent was gone before the request was made.
        os.kill(os.getpid(), signal.SIGTERM)
