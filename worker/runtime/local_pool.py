"""A process's own threads for work its timer brings back: a low-rate account's flush at its
reserved call slot runs here instead of as a dramatiq message.

At 2 calls/s every call of an account is its own flush, and a flush message cost more
than the call (enqueue, fetch, the middleware and the ack: a third of a worker's CPU in
``bench accounts``). Nothing durable is lost by skipping the queue: the timer already held
the flush in this process only, and if the process dies the sweep finds the tag.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable

import structlog

log = structlog.get_logger("tagsync.local_pool")


class LocalPool:
    """Runs callables on up to ``size`` daemon threads, started as work needs them."""

    def __init__(self, name: str = "tagsync-local", size: int = 8) -> None:
        self._name = name
        self._size = size
        self._start()
        # A forked child has none of the threads: it starts empty (dramatiq forks its
        # processes; work queued in the parent is the parent's).
        os.register_at_fork(after_in_child=self._start)

    def _start(self) -> None:
        self._work: queue.SimpleQueue[Callable[[], object]] = queue.SimpleQueue()
        self._lock = threading.Condition()
        self._threads = 0
        #: Threads free for work, less the work queued for them (negative: work waits).
        self._idle = 0

    @property
    def size(self) -> int:
        return self._size

    def resize(self, size: int) -> None:
        """Allow ``size`` threads (more start as work needs them; none is stopped)."""
        with self._lock:
            self._size = max(1, size)

    def submit(self, work: Callable[[], object]) -> None:
        """Run ``work`` on a free thread, or on the next one free."""
        with self._lock:
            if self._idle <= 0 and self._threads < self._size:
                name = f"{self._name}-{self._threads}"
                threading.Thread(target=self._run, name=name, daemon=True).start()
                self._threads += 1
                self._idle += 1
            self._idle -= 1
        self._work.put(work)

    def _run(self) -> None:
        while True:
            work = self._work.get()
            try:
                work()
            except Exception:  # one failed piece of work must not stop the thread
                log.exception("local_pool.work_failed")
            finally:
                with self._lock:
                    self._idle += 1
                    self._lock.notify_all()

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait until no work runs or waits (a clean stop lets flushes end their calls);
        False if some still did after ``timeout_s``."""
        with self._lock:
            return self._lock.wait_for(lambda: self._idle >= self._threads, timeout_s)
