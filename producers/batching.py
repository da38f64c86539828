"""``Producer``: buffer intents for a few milliseconds and enqueue them in large messages.

Like a Kafka producer's linger: a web server calling ``producer.tag(...)`` from many
threads pays for one queue message per linger period (or per 1,000 intents), not one per
event. Intents are checked when added, so a bad one raises in the caller's thread.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from types import TracebackType
from typing import Any

from producers._queue import enqueue
from producers.intents import MAX_INTENTS_PER_MESSAGE, Intent, build_intents, parse_intents

#: How long an intent waits in the buffer for company, by default.
DEFAULT_LINGER_MS = 5.0


class Producer:
    """A thread-safe, batching producer; use it as a context manager or call ``close()``.

    ``linger_ms``: how long the first buffered intent waits before the buffer is sent.
    ``batch_size``: send at once when this many intents are buffered.
    If sending fails (Redis down), the intents stay buffered and the next flush retries;
    ``flush()`` and ``close()`` raise the error, so nothing is dropped silently.
    """

    def __init__(
        self, *, linger_ms: float = DEFAULT_LINGER_MS, batch_size: int = MAX_INTENTS_PER_MESSAGE
    ) -> None:
        if linger_ms < 0 or batch_size < 1:
            raise ValueError("linger_ms must be >= 0 and batch_size >= 1")
        self.linger_s = linger_ms / 1000
        self.batch_size = batch_size
        self._buffer: list[Intent] = []
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._closed = False
        self._error: BaseException | None = None
        #: How many intents this producer has enqueued.
        self.sent = 0
        self._thread = threading.Thread(target=self._run, name="tagsync-producer", daemon=True)
        self._thread.start()

    def tag(
        self,
        tag_id: int | str,
        openids: str | Iterable[str],
        *,
        ts: float | None = None,
        account: str | None = None,
    ) -> int:
        """Buffer "tag these fans"; return how many intents were buffered."""
        return self._add_built("tag", tag_id, openids, ts, account)

    def untag(
        self,
        tag_id: int | str,
        openids: str | Iterable[str],
        *,
        ts: float | None = None,
        account: str | None = None,
    ) -> int:
        """Buffer "untag these fans"; return how many intents were buffered."""
        return self._add_built("untag", tag_id, openids, ts, account)

    def send(self, intents: Iterable[Any]) -> int:
        """Buffer intent dicts; all are checked first, none is buffered if one is bad."""
        return self._add(parse_intents(intents))

    def _add_built(
        self,
        op: str,
        tag_id: int | str,
        openids: str | Iterable[str],
        ts: float | None,
        account: str | None,
    ) -> int:
        return self._add(build_intents(op, tag_id, openids, ts, account))

    def _add(self, intents: list[Intent]) -> int:
        with self._lock:
            if self._closed:
                raise RuntimeError("this Producer is closed")
            was_empty = not self._buffer
            self._buffer.extend(intents)
            full = len(self._buffer) >= self.batch_size
            if was_empty or full:
                self._wake.notify()
        return len(intents)

    def flush(self) -> int:
        """Send everything buffered now; return how many intents were sent."""
        with self._send_lock:
            with self._lock:
                pending, self._buffer = self._buffer, []
            if not pending:
                return 0
            try:
                enqueue(pending)
            except BaseException:
                with self._lock:
                    # Put them back in front, in order, for the next try.
                    self._buffer[:0] = pending
                raise
            self.sent += len(pending)
            return len(pending)

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._buffer and not self._closed:
                    self._wake.wait()
                if self._closed:
                    return
                if len(self._buffer) < self.batch_size:
                    # Linger for company, unless the buffer fills meanwhile.
                    self._wake.wait(self.linger_s)
            try:
                self.flush()
                self._error = None
            except Exception as exc:  # kept, raised by flush()/close(), retried after a pause
                self._error = exc
                time.sleep(min(1.0, max(self.linger_s, 0.05)))

    def close(self) -> None:
        """Stop the background thread and send what is buffered (raises if that fails)."""
        with self._lock:
            self._closed = True
            self._wake.notify_all()
        self._thread.join()
        self.flush()

    def __enter__(self) -> Producer:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
