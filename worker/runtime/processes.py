"""Child processes that do not outlive the process that started them."""

from __future__ import annotations

import contextlib
import ctypes
import signal
import subprocess
import sys
from typing import Any

#: prctl option: the signal a child gets when its parent dies (Linux).
_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """``preexec_fn``: have Linux send SIGTERM to this child when its parent dies.

    A demo or test killed with SIGKILL cannot clean up; this way its Redis, simulator and
    workers still go. Elsewhere than Linux it does nothing.
    """
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def stop_process(process: subprocess.Popen[Any], *, timeout_s: float = 10) -> None:
    """Terminate a child process (SIGKILL if it lingers) and close its pipes."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    for stream in (process.stdin, process.stdout, process.stderr):
        if stream:
            stream.close()
