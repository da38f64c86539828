"""A worker process's life as others see it: its heartbeat in Redis, and a clean stop.

Heartbeat: every few seconds each worker process writes its host, pid, start time, threads,
messages handled and last message time under ``tagsync:workers``, stamped with Redis's
clock (hosts' clocks may differ). ``tagsync status`` lists them; ``status --check`` says
"down" when none has beaten lately. A stopping process removes its own entry.

Stop (SIGTERM): dramatiq stops its worker threads, lets each finish its message, then puts
back every message it had fetched and not begun (its in-memory and delayed ones). A flush
runs several calls in one message; ``STOPPING`` tells it to end after the call in flight,
hand its lease back and schedule the tag's next flush on the queue, so another process
takes the tag at once instead of after the lease expires.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import threading
import time
from dataclasses import dataclass
from types import FrameType
from typing import Any

import redis
import structlog
from dramatiq import Middleware

from producers.redis_url import connect

log = structlog.get_logger("tagsync.worker")

#: The hash of heartbeats: field ``host:pid``, value a JSON document (``Heartbeat``).
HEARTBEATS_KEY = "tagsync:workers"
#: How often a process beats, s.
BEAT_EVERY_S = 5.0
#: A process that has not beaten for this long is taken for dead, s.
ALIVE_WITHIN_S = 20.0
#: Entries of processes gone this long (killed, so they could not remove their own) go, s.
FORGET_AFTER_S = 24 * 3600.0
#: Set in this process once dramatiq begins to stop: flushes end after their call in flight.
STOPPING = threading.Event()


@dataclass(frozen=True)
class Heartbeat:
    """One worker process, as its last beat described it."""

    host: str
    pid: int
    started_at: float
    beat_at: float
    last_message_at: float | None
    messages: int
    threads: int

    @property
    def name(self) -> str:
        return f"{self.host}:{self.pid}"

    def alive(self, now: float) -> bool:
        return now - self.beat_at <= ALIVE_WITHIN_S


def redis_now(connection: redis.Redis) -> float:
    """Redis's clock, s: the one every host's heartbeat is stamped and read with."""
    seconds, micros = connection.time()
    return float(seconds) + micros / 1e6


def heartbeats(connection: redis.Redis) -> list[Heartbeat]:
    """Every worker process that beat within a day, oldest start first."""
    found = []
    for raw in connection.hvals(HEARTBEATS_KEY):
        try:
            found.append(Heartbeat(**json.loads(raw)))
        except (TypeError, ValueError):
            continue  # written by another version: not ours to read
    return sorted(found, key=lambda beat: (beat.started_at, beat.name))


class Lifecycle(Middleware):
    """Heartbeats while the process works; ``STOPPING`` and a last word when it stops."""

    def __init__(self, redis_url: str) -> None:
        self.url = redis_url
        self.started_at = time.time()
        self.messages = 0
        self.last_message_at: float | None = None
        self.threads = 0
        self._name = f"{socket.gethostname()}:{os.getpid()}"
        self._stop = threading.Event()
        self._stopping_since = 0.0
        self._thread: threading.Thread | None = None

    def after_worker_boot(self, broker: Any, worker: Any) -> None:
        # Set here, not at import: dramatiq forks its worker processes from one parent.
        self._name = f"{socket.gethostname()}:{os.getpid()}"
        self.started_at = time.time()
        self.threads = int(getattr(worker, "worker_threads", 0) or 0)
        STOPPING.clear()
        self._stop.clear()
        _first_sigterm_only()
        self._thread = threading.Thread(target=self._beat, name="tagsync-heartbeat", daemon=True)
        self._thread.start()

    def after_process_message(
        self, broker: Any, message: Any, *, result: Any = None, exception: Any = None
    ) -> None:
        self.messages += 1  # a lost increment between threads is of no consequence
        self.last_message_at = time.time()

    def before_worker_shutdown(self, broker: Any, worker: Any) -> None:
        STOPPING.set()
        self._stopping_since = time.monotonic()
        log.info("worker.stopping", worker=self._name, messages=self.messages)

    def after_worker_shutdown(self, broker: Any, worker: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(BEAT_EVERY_S)  # so no beat lands after the entry is removed
        # On failure its entry ages out: status reads it as dead after ALIVE_WITHIN_S.
        with contextlib.suppress(redis.RedisError):
            self._client().hdel(HEARTBEATS_KEY, self._name)
        log.info(
            "worker.stopped",
            worker=self._name,
            messages=self.messages,
            stop_s=round(time.monotonic() - self._stopping_since, 2),
        )

    def _client(self) -> redis.Redis:
        return connect(self.url, socket_timeout=BEAT_EVERY_S, socket_connect_timeout=2.0)

    def _beat(self) -> None:
        client = self._client()
        failing = False
        while True:
            try:
                now = redis_now(client)
                # Every time in the beat on Redis's clock: status compares them with it, and
                # this host's clock may be off.
                skew = now - time.time()
                last = self.last_message_at
                beat = Heartbeat(
                    host=self._name.rpartition(":")[0],
                    pid=os.getpid(),
                    started_at=self.started_at + skew,
                    beat_at=now,
                    last_message_at=None if last is None else last + skew,
                    messages=self.messages,
                    threads=self.threads,
                )
                client.hset(HEARTBEATS_KEY, self._name, json.dumps(beat.__dict__))
                self._forget_the_long_gone(client, now)
                failing = False
            except redis.RedisError as exc:
                if not failing:  # once per outage: the recovery watch says the rest
                    log.warning("worker.heartbeat_failed", error=str(exc))
                failing = True
            if self._stop.wait(BEAT_EVERY_S):
                return

    @staticmethod
    def _forget_the_long_gone(client: redis.Redis, now: float) -> None:
        for beat in heartbeats(client):
            if now - beat.beat_at > FORGET_AFTER_S:
                client.hdel(HEARTBEATS_KEY, beat.name)


def _first_sigterm_only() -> None:
    """Make a worker process act on its first SIGTERM only.

    SIGTERM to the whole process group (systemd's default, honcho, ``kill -TERM -PGID``)
    reaches a worker process twice: once itself, once forwarded by dramatiq's main process,
    and dramatiq takes a second SIGTERM for "kill now", dropping its leases and fetched
    messages. The stop stays bounded by the shutdown timeout; SIGKILL is the hard stop.
    """
    if threading.current_thread() is not threading.main_thread():
        return  # signals are the main thread's (an in-process worker in a test, say)
    previous = signal.getsignal(signal.SIGTERM)
    if not callable(previous):
        return
    received = threading.Event()

    def once(signum: int, frame: FrameType | None) -> None:
        if received.is_set():
            log.info("worker.signal_repeated", signal="SIGTERM")
            return
        received.set()
        previous(signum, frame)

    signal.signal(signal.SIGTERM, once)
