"""The one place producers touch the queue: a dramatiq Redis broker without middleware.

With ``TAGSYNC_REDIS_WAIT_REPLICAS=N`` an enqueue returns only once N replicas hold it
(Redis ``WAIT``), so an intent a producer was told is accepted survives the failover of an
asynchronously replicated primary; otherwise ``NotReplicated`` is raised and the caller
sends again (intents are idempotent: the same event time merges as one).
"""

from __future__ import annotations

import copy
import os
import threading
from collections.abc import Iterable

import redis
from dramatiq import Message
from dramatiq.brokers.redis import RedisBroker

from producers.intents import INGEST_ACTOR, QUEUE_NAME, Intent, chunks
from producers.redis_url import connect, queue_url

_lock = threading.Lock()
_broker: RedisBroker | None = None
_redis_url: str | None = None


#: A producer's Redis command gives up after this long, s: callers see a stalled Redis as
#: an error they can answer (HTTP 429), not a hung request.
SOCKET_TIMEOUT_S = 5.0
#: How long an enqueue waits for replicas by default, ms (``TAGSYNC_REDIS_WAIT_MS``).
DEFAULT_WAIT_MS = 1000
#: The key whose increment marks this connection's place in the replication stream.
WAIT_MARK_KEY = "tagsync:producers:replicated"


class NotConfigured(RuntimeError):
    """No Redis to enqueue to: set TAGSYNC_REDIS_URL or call producers.configure()."""


class NotReplicated(redis.RedisError):
    """Fewer replicas than ``TAGSYNC_REDIS_WAIT_REPLICAS`` acknowledged an enqueue in time:
    the intents may not survive a failover; send them again."""


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    if not raw.isdigit():
        raise ValueError(f"{name}={raw!r} must be a whole number")
    return int(raw)


def configure(redis_url: str | None = None) -> None:
    """Use ``redis_url`` as the broker (the queue's Redis) instead of ``TAGSYNC_QUEUE_URL``
    or ``TAGSYNC_REDIS_URL``."""
    global _broker, _redis_url
    with _lock:
        if _broker is not None:
            _broker.close()
        _broker, _redis_url = None, redis_url


def broker() -> RedisBroker:
    """The producers' broker, created on first use."""
    global _broker
    with _lock:
        if _broker is None:
            # The queue's Redis: TAGSYNC_QUEUE_URL when the state lives on a cluster.
            url = _redis_url or queue_url(os.environ)
            if not url:
                raise NotConfigured(
                    "set TAGSYNC_REDIS_URL or call producers.configure(redis_url=...)"
                )
            # No middleware: producers only enqueue, and must not pull in the worker's.
            client = connect(url, socket_timeout=SOCKET_TIMEOUT_S, socket_connect_timeout=2.0)
            _broker = RedisBroker(client=client, middleware=[])  # type: ignore[no-untyped-call]
        return _broker


#: How intents may say they came (``tagsync explain`` shows it): the Python API, a JSON
#: lines file or stream (``tagsync produce``), the HTTP ingest.
SOURCES = frozenset({"python", "jsonl", "http"})


def enqueue(intents: Iterable[Intent], *, source: str = "python") -> int:
    """Put checked intents on the queue in messages of at most 1,000; return how many once
    they are there (and, with ``TAGSYNC_REDIS_WAIT_REPLICAS``, on the replicas)."""
    if source not in SOURCES:
        raise ValueError(f"source must be one of {sorted(SOURCES)}")
    batch = list(intents)
    if batch:
        _GROUP.enqueue(batch, source)
    return len(batch)


class _Call:
    """One ``enqueue`` call waiting in a group: its intents, and how its sending ended."""

    __slots__ = ("done", "error", "intents", "source")

    def __init__(self, intents: list[Intent], source: str) -> None:
        self.intents = intents
        self.source = source
        self.done = False
        self.error: Exception | None = None


class _GroupCommit:
    """Concurrent enqueues share messages and round trips, as a database's group commit.

    A call that comes while another thread is sending waits; the next sender takes every
    call waiting then and sends their intents together (and waits for replicas once). A
    call still returns only when its own intents are on the queue, and a call alone is
    sent at once: nothing lingers. Four threads calling ``producers.tag`` one intent at a
    time put several intents in a message instead of one each.
    """

    def __init__(self) -> None:
        self._turn = threading.Condition()
        self._waiting: list[_Call] = []
        self._sending = False

    def enqueue(self, intents: list[Intent], source: str) -> None:
        call = _Call(intents, source)
        with self._turn:
            self._waiting.append(call)
            while self._sending and not call.done:
                self._turn.wait()
            if call.done:  # sent by another thread's turn
                if call.error is not None:
                    raise copy.copy(call.error)
                return
            self._sending = True
            group, self._waiting = self._waiting, []
        error: Exception | None = None
        try:
            by_source: dict[str, list[Intent]] = {}
            for member in group:
                by_source.setdefault(member.source, []).extend(member.intents)
            _send(by_source)
        except Exception as exc:
            error = exc
            raise
        except BaseException:  # interrupted: the others' intents may not be on the queue
            error = RuntimeError("the thread sending these intents was interrupted")
            raise
        finally:
            with self._turn:
                for member in group:
                    member.done, member.error = True, error
                self._sending = False
                self._turn.notify_all()


_GROUP = _GroupCommit()


def _send(by_source: dict[str, list[Intent]]) -> None:
    """Enqueue intents in messages of at most 1,000 (one source each: an option of the
    message, which a worker that does not know it ignores); wait for replicas if asked."""
    target = broker()
    for source, batch in by_source.items():
        for chunk in chunks(batch):
            message: Message[None] = Message(
                queue_name=QUEUE_NAME,
                actor_name=INGEST_ACTOR,
                args=([intent.row() for intent in chunk],),
                kwargs={},
                options={"source": source},
            )
            target.enqueue(message)
    replicas = _env_int("TAGSYNC_REDIS_WAIT_REPLICAS", 0)
    if replicas:
        wait_for_replicas(
            target.client, replicas, _env_int("TAGSYNC_REDIS_WAIT_MS", DEFAULT_WAIT_MS)
        )


def wait_for_replicas(client: redis.Redis, replicas: int, timeout_ms: int) -> None:
    """Return once ``replicas`` replicas hold every write made so far; else ``NotReplicated``.

    WAIT counts the writes of its own connection, and the enqueue took some connection of the
    pool: so one pipeline writes a mark and waits on the same connection. The replication
    stream is in order, so a replica holding the mark holds the enqueue before it.
    """
    pipe = client.pipeline(transaction=False)
    pipe.incr(WAIT_MARK_KEY)
    pipe.execute_command("WAIT", replicas, timeout_ms)  # type: ignore[no-untyped-call]
    acked = int(pipe.execute()[1])
    if acked < replicas:
        raise NotReplicated(
            f"{acked} of {replicas} replicas acknowledged the intents within {timeout_ms} ms "
            "(TAGSYNC_REDIS_WAIT_REPLICAS); send them again"
        )
