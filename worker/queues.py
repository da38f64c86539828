"""The dramatiq queues and the flush callback: names any module may import without side effects.

Importing ``worker.actors`` builds a broker; code that only needs to name a queue or to
send a flush takes these instead (the actors module supplies the real ``send_flush``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from dramatiq import Message
from dramatiq.brokers.redis import RedisBroker
from redis import Redis

from producers.intents import INGEST_ACTOR, QUEUE_NAME
from producers.redis_url import connect
from worker.base.settings import Settings

#: The queue of intent messages (producers write it; the ``ingest`` actor reads it).
INTENTS_QUEUE = QUEUE_NAME
#: The queue of flush messages (one per (account, tag) at a time).
FLUSH_QUEUE = "tagsync.flush"
#: The actors' names.
INGEST = INGEST_ACTOR
FLUSH = "flush"
RESOLVE = "resolve_tag"


#: Intent messages in the queue from which it counts as a backlog: the accounts of the
#: messages ingest merges then hold their batches for it (a steady stream keeps the queue
#: far shorter).
BACKLOG_MESSAGES = 10


def queue_connection(settings: Settings, state: Redis) -> Redis:
    """The queue's Redis: ``state`` itself unless ``TAGSYNC_QUEUE_URL`` names another (the
    state on a Redis Cluster, the queue on a plain Redis)."""
    if settings.queue_url is None or settings.queue_url == settings.redis_url:
        return state
    return connect(settings.queue_url)


def queue_length(redis: Redis, queue: str) -> int:
    """Messages waiting in ``queue``, not yet fetched by any worker (dramatiq's list)."""
    return int(redis.llen(f"dramatiq:{queue}"))


def queued_intents(redis: Redis) -> int:
    """Intent messages waiting in the queue, not yet fetched by any worker."""
    return queue_length(redis, INTENTS_QUEUE)


def unsettled_messages(redis: Redis) -> int:
    """Intent messages not yet ingested: queued, delayed for a retry (dramatiq's ``.DQ``),
    or fetched by a worker and not yet acked."""
    waiting = queued_intents(redis) + queue_length(redis, f"{INTENTS_QUEUE}.DQ")
    for queue in (INTENTS_QUEUE, f"{INTENTS_QUEUE}.DQ"):
        for key in redis.scan_iter(f"dramatiq:__acks__.*.{queue}"):
            waiting += int(redis.scard(key))
    return waiting


def send_flushes(redis: Redis, tags: Iterable[tuple[str, int]]) -> int:
    """Enqueue a flush of each (account, tag) now, from outside the worker's actors (an
    operator's command that lifted a pause), on the queue's Redis ``redis``; how many."""
    broker = RedisBroker(client=redis, middleware=[])  # type: ignore[no-untyped-call]
    sent = 0
    for account, tag_id in tags:
        message: Message[None] = Message(
            queue_name=FLUSH_QUEUE,
            actor_name=FLUSH,
            args=(account, tag_id, None),
            kwargs={},
            options={},
        )
        broker.enqueue(message)
        sent += 1
    return sent


class SendFlush(Protocol):
    """Enqueue a flush of (account, tag) after ``delay_ms``; ``slot_at`` is a call slot the
    gate reserved for it (ms on Redis's clock), to be used when it runs."""

    def __call__(
        self, account: str, tag_id: int, delay_ms: int, *, slot_at: int | None = None
    ) -> None: ...
