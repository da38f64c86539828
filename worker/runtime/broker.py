"""The worker's dramatiq broker: Redis, with tagsync's middleware."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from producers.redis_url import queue_url
from worker.runtime.redis_client import retrying_client

#: A worker that misses heartbeats this long is dead: its unacked messages are redelivered.
HEARTBEAT_TIMEOUT_MS = 15_000
#: Per million broker commands, how many also run queue maintenance (requeueing the
#: messages of dead workers); dramatiq's 1,000 can leave them for minutes on a quiet queue.
MAINTENANCE_CHANCE = 20_000


def broker_url(redis_url: str | None = None) -> str:
    """The Redis URL of the broker: ``TAGSYNC_QUEUE_URL``, else ``TAGSYNC_REDIS_URL``,
    unless given."""
    return redis_url or queue_url(os.environ) or "redis://127.0.0.1:6379/0"


def state_url() -> str:
    """The Redis URL of tagsync's state: ``TAGSYNC_REDIS_URL``."""
    return os.environ.get("TAGSYNC_REDIS_URL") or "redis://127.0.0.1:6379/0"


def setup_broker(
    *, extra_middleware: Sequence[Any] = (), redis_url: str | None = None
) -> RedisBroker:
    """Create the broker from ``broker_url()`` and make it dramatiq's global one.

    Its client retries every command until Redis answers (``worker.runtime.redis_client``): a
    fetch, an enqueue from an actor or an ack waits out an outage instead of failing.
    """
    broker = RedisBroker(  # type: ignore[no-untyped-call]
        client=retrying_client(broker_url(redis_url)),
        heartbeat_timeout=HEARTBEAT_TIMEOUT_MS,
        maintenance_chance=MAINTENANCE_CHANCE,
    )
    for middleware in extra_middleware:
        broker.add_middleware(middleware)
    dramatiq.set_broker(broker)
    return broker
