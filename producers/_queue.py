"""The one place producers touch the queue: a dramatiq Redis broker without middleware."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable

from dramatiq import Message
from dramatiq.brokers.redis import RedisBroker

from producers.intents import INGEST_ACTOR, QUEUE_NAME, Intent, chunks

_lock = threading.Lock()
_broker: RedisBroker | None = None
_redis_url: str | None = None


class NotConfigured(RuntimeError):
    """No Redis to enqueue to: set TAGSYNC_REDIS_URL or call producers.configure()."""


def configure(redis_url: str | None = None) -> None:
    """Use ``redis_url`` as the broker instead of ``TAGSYNC_REDIS_URL``."""
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
            url = _redis_url or os.environ.get("TAGSYNC_REDIS_URL")
            if not url:
                raise NotConfigured(
                    "set TAGSYNC_REDIS_URL or call producers.configure(redis_url=...)"
                )
            # No middleware: producers only enqueue, and must not pull in the worker's.
            _broker = RedisBroker(url=url, middleware=[])  # type: ignore[no-untyped-call]
        return _broker


def enqueue(intents: Iterable[Intent]) -> int:
    """Put checked intents on the queue in messages of at most 1,000; return how many."""
    target = broker()
    batch = list(intents)
    for chunk in chunks(batch):
        message: Message[None] = Message(
            queue_name=QUEUE_NAME,
            actor_name=INGEST_ACTOR,
            args=([intent.row() for intent in chunk],),
            kwargs={},
            options={},
        )
        target.enqueue(message)
    return len(batch)
