"""Child processes that do not outlive the process that started them, and their ports."""

from __future__ import annotations

import contextlib
import ctypes
import signal
import socket
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


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def check_port_free(host: str, port: int, setting: str) -> None:
    """Raise ``PortTaken`` naming ``setting`` when ``port`` cannot be bound on ``host``."""
    if port == 0:
        return
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # As servers bind: a port left in TIME_WAIT by a stopped one counts as free.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise PortTaken(f"{setting}={port} is taken on {host} ({exc.strerror})") from None


class PortTaken(OSError):
    """A port a process is told to listen on is already in use; the message names it."""
