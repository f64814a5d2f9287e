"""Leave a finished fedmpi process without tearing its module graph down.

After `import transformers` the interpreter's own shutdown (finalising and freeing
thousands of modules: torch._dynamo, DTensor, sympy, ...) takes ~2.3 s on a
2-core machine, measured apart from anything fedmpi does. Every job pays it once
per rank and once in the launcher, one after another at the end of the job, and
a sweep or the test suite pays it on every launch. Here the end of `fedmpi`'s
command line is: flush, run the atexit handlers (logging, trackers, anything a
library registered), flush again, `os._exit`. Files fedmpi writes are closed or
flushed before this point (run folder writers flush every row and are closed
by the engine), so nothing that was written is lost; only the teardown is.
mpi4py finalises MPI from a C-level exit hook that `os._exit` skips, so MPI is
finalised here first. A job stopped by a signal leaves the ordinary way, as
before: once Hydra has forwarded a signal, ranks that left quickly made it
report the stop (75) as 0, or SIGKILL the server mid-exit (tried here with
plain mpi4py scripts: 0 in 4 of 4, and 9 once). `leave_ordinarily()` marks
such a process; any non-zero status does too.
Only the command line's entry points call it, never library code.
"""
from __future__ import annotations

import atexit
import os
import sys


_ORDINARY = False


def leave_ordinarily() -> None:
    """This process ends with the interpreter's own teardown (a rank stopped by a signal)."""
    global _ORDINARY
    _ORDINARY = True


def exit_now(code: int | None) -> None:
    """sys.exit(code), without the interpreter's teardown."""
    status = 0 if code is None else int(code)
    if _ORDINARY or (status != 0 and "mpi4py.MPI" in sys.modules):
        sys.exit(status)
    _flush()
    atexit._run_exitfuncs()
    _finalize_mpi()
    _flush()  # what the handlers printed
    os._exit(status)


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):
            pass


def _finalize_mpi() -> None:
    mpi = sys.modules.get("mpi4py.MPI")
    if mpi is not None and mpi.Is_initialized() and not mpi.Is_finalized():
        mpi.Finalize()
