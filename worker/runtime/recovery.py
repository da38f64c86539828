"""Handing back this worker's own unacked messages when Redis returns after an outage.

dramatiq moves a fetched message into the worker's unacked set (``__acks__.<broker
id>.<queue>``) and gives it back to the queue only when the worker is dead (no heartbeat
for 15 s). A fetch whose answer was lost with the connection, or a consumer that dropped
its prefetched messages on a connection error, leaves messages in that set which this
live worker will never process: nobody would, as long as it lives.

``OutageRecovery`` watches Redis from a thread of each worker process (a PING every
``WATCH_INTERVAL_S``). When Redis answers again after failing, it hands back every
message of the process's unacked sets that the process is not holding: not being
processed, not waiting in its work queue or delay queues, not prefetched. Handing back
one it holds after all costs a duplicate, which the pipeline absorbs (ingest is
idempotent; a flush is guarded by the tag's lease). It also hands back, when a consumer
stops, the messages it prefetched and never gave the worker (dramatiq's Redis consumer
leaves them in the unacked set).
"""

from __future__ import annotations

import threading
import time
from typing import Any

import redis
import structlog
from dramatiq import Middleware
from dramatiq.message import Message

from producers.redis_url import connect
from worker.base.lua import text

log = structlog.get_logger("tagsync.recovery")

#: How often each worker process looks whether Redis answers, s.
WATCH_INTERVAL_S = 0.5
#: How long a look may take before Redis counts as away, s.
WATCH_TIMEOUT_S = 1.0


class OutageRecovery(Middleware):
    """Hands back the process's stranded unacked messages when Redis returns."""

    def __init__(self, url: str, *, interval_s: float = WATCH_INTERVAL_S) -> None:
        self.url = url
        self.interval_s = interval_s
        self._lock = threading.Lock()
        #: redis message ids being processed (from before_process_message to the ack).
        self._in_progress: set[str] = set()
        self._stop = threading.Event()
        self._worker: Any = None
        self._broker: Any = None

    # -- what the process holds -------------------------------------------------------------

    def before_process_message(self, broker: Any, message: Any) -> None:
        with self._lock:
            self._in_progress.add(_redis_id(message))

    def after_ack(self, broker: Any, message: Any) -> None:
        with self._lock:
            self._in_progress.discard(_redis_id(message))

    after_nack = after_ack

    def held(self) -> set[str]:
        """redis message ids this process holds: processing, queued in memory, prefetched."""
        with self._lock:
            ids = set(self._in_progress)
        worker = self._worker
        if worker is None:
            return ids
        with worker.work_queue.mutex:
            ids |= {_redis_id(item.message) for item in list(worker.work_queue.queue)}
        for thread in list(getattr(worker, "consumers", {}).values()):
            delayed = getattr(thread, "delay_queue", None)
            if delayed is not None:
                with delayed.mutex:
                    ids |= {_redis_id(item.message) for item in list(delayed.queue)}
            ids |= set(_prefetched(getattr(thread, "consumer", None)))
        return ids

    # -- the watch --------------------------------------------------------------------------

    def after_worker_boot(self, broker: Any, worker: Any) -> None:
        self._broker, self._worker = broker, worker
        self._stop.clear()
        threading.Thread(target=self._watch, name="tagsync-recovery", daemon=True).start()

    def before_worker_shutdown(self, broker: Any, worker: Any) -> None:
        self._stop.set()

    def before_consumer_thread_shutdown(self, broker: Any, thread: Any) -> None:
        """Hand back the messages the stopping consumer fetched and never gave the worker.

        dramatiq's Redis consumer prefetches several messages at a time into its cache and,
        once stopping, breaks off after the one in hand; its ``close`` does nothing, so the
        rest stayed in this process's unacked set until its heartbeat went stale (15 s): a
        clean stop left a message behind now and then (``tests/test_lifecycle.py``).
        """
        consumer = getattr(thread, "consumer", None)
        ids = [i for i in _prefetched(consumer) if i]
        if consumer is None or not ids:
            return
        try:
            broker.do_requeue(consumer.queue_name, *ids)
        except redis.RedisError:
            # Redis is away: they go back when this process's heartbeat is stale.
            log.warning("worker.prefetched_kept", queue=consumer.queue_name, messages=len(ids))
            return
        consumer.message_cache = []
        log.info("worker.prefetched_handed_back", queue=consumer.queue_name, messages=len(ids))

    def _watch(self) -> None:
        client = connect(
            self.url, socket_timeout=WATCH_TIMEOUT_S, socket_connect_timeout=WATCH_TIMEOUT_S
        )
        away_since: float | None = None
        while not self._stop.wait(self.interval_s):
            try:
                client.ping()
            except redis.RedisError:
                if away_since is None:
                    away_since = _now()
                    log.warning("redis.away")
                continue
            if away_since is not None:
                outage_s = round(_now() - away_since, 1)
                away_since = None
                try:
                    handed = self.hand_back(client)
                except redis.RedisError:
                    away_since = _now()  # gone again: try once it is back
                    continue
                log.warning("redis.back", outage_s=outage_s, handed_back=handed)

    def hand_back(self, client: redis.Redis) -> int:
        """Requeue the process's unacked messages it does not hold; return how many."""
        broker = self._broker
        if broker is None:
            return 0
        held = self.held()
        handed = 0
        queues = set(broker.get_declared_queues()) | set(getattr(broker, "delay_queues", set()))
        for queue in sorted(queues):
            key = f"{broker.namespace}:__acks__.{broker.broker_id}.{queue}"
            members = {text(m) for m in client.smembers(key)}
            stranded = sorted(members - held)
            if stranded:
                broker.do_requeue(queue, *stranded)
                handed += len(stranded)
        return handed


def _prefetched(consumer: Any) -> list[str]:
    """The redis message ids a dramatiq Redis consumer fetched and has not handed out."""
    cached = list(getattr(consumer, "message_cache", None) or [])
    return [_redis_id(Message.decode(data)) for data in cached if data]


def _redis_id(message: Any) -> str:
    return str(message.options.get("redis_message_id", ""))


def _now() -> float:
    return time.monotonic()
