"""A stopping worker's prefetched messages, with dramatiq's real Redis broker and consumer."""

from __future__ import annotations

from types import SimpleNamespace

import redis
from dramatiq import Message
from dramatiq.brokers.redis import RedisBroker

from worker.runtime.recovery import OutageRecovery


def test_a_stopping_consumer_hands_back_what_it_prefetched(
    redis_client: redis.Redis, redis_url: str
) -> None:
    """A consumer that fetched 3 messages and gave the worker 1 is stopped: the other 2 go
    back to the queue at once, not after the process's heartbeat goes stale (15 s)."""
    # Given: 3 messages, and a consumer that prefetched them all and handed out one
    broker = RedisBroker(client=redis_client, middleware=[])  # type: ignore[no-untyped-call]
    broker.declare_queue("q")
    for n in range(3):
        broker.enqueue(Message(queue_name="q", actor_name="a", args=(n,), kwargs={}, options={}))
    consumer = broker.consume("q", prefetch=3, timeout=100)
    taken = next(consumer)
    assert taken is not None
    acks = f"dramatiq:__acks__.{broker.broker_id}.q"
    assert redis_client.scard(acks) == 3 and redis_client.llen("dramatiq:q") == 0
    # When: its consumer thread shuts down
    OutageRecovery(redis_url).before_consumer_thread_shutdown(
        broker,
        SimpleNamespace(consumer=consumer),  # dramatiq's ConsumerThread, as seen here
    )
    # Then: the 2 it held are queued again; only the one being processed stays unacked
    assert redis_client.llen("dramatiq:q") == 2
    assert redis_client.smembers(acks) == {taken.options["redis_message_id"].encode()}
