"""A process-local timer: runs callbacks at a time, on one daemon thread.

Used for short waits (a low-rate account's flush coming back for its reserved call slot,
run then on the process's own threads: ``worker.runtime.local_pool``), where a dramatiq
delayed message costs its delay-queue round trip. A process that stops runs what waits at
once (the flushes go to the queue); one that dies takes it along, and the sweep then finds
the tag with work and no flush coming, within its grace.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable

import structlog

log = structlog.get_logger("tagsync.timer")


class LocalTimer:
    """Callbacks due at a monotonic time, run in order on the timer's thread."""

    def __init__(self, name: str = "tagsync-timer") -> None:
        self._name = name
        self._heap: list[tuple[float, int, Callable[[], object]]] = []
        self._order = itertools.count()
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None

    def __len__(self) -> int:
        with self._wake:
            return len(self._heap)

    def call_later(self, delay_s: float, callback: Callable[[], object]) -> None:
        """Run ``callback`` after ``delay_s`` seconds."""
        with self._wake:
            heapq.heappush(self._heap, (time.monotonic() + delay_s, next(self._order), callback))
            if self._thread is None or not self._thread.is_alive():
                # Started on first use, in the process that uses it (after dramatiq forks).
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
            self._wake.notify()

    def run_all_now(self) -> int:
        """Run every callback still waiting, now, on the caller's thread (a process that
        stops hands its waits on); how many."""
        with self._wake:
            waiting, self._heap = sorted(self._heap), []
        for _, _, callback in waiting:
            try:
                callback()
            except Exception:
                log.exception("timer.callback_failed")
        return len(waiting)

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._heap or self._heap[0][0] > time.monotonic():
                    timeout = self._heap[0][0] - time.monotonic() if self._heap else None
                    self._wake.wait(timeout)
                _, _, callback = heapq.heappop(self._heap)
            try:
                callback()
            except Exception:  # one failed callback must not stop the others
                log.exception("timer.callback_failed")
