"""The dramatiq actors: what ``tagsync worker`` runs (``dramatiq worker.actors``).

- ``ingest`` (queue ``tagsync.intents``): merges intents into the pending buffers;
- ``flush`` (queue ``tagsync.flush``): sends one tag's next batches to WeChat;
- ``resolve_tag`` (queue ``tagsync.flush``): finds (or creates) the id of a tag that
  intents name, then merges them (``worker.tag_names``).
Ingest has the higher priority: merging a queued message takes well under a millisecond,
and every intent merged before its tag's batch leaves is one fewer call (a backlog in the
queue coalesces fully instead of leaving in partial batches). Flushes never hold a thread
for long (``worker.flush``), so they are not starved by a steady stream.
"""

from __future__ import annotations

import os
from functools import cache
from typing import Any

import dramatiq
import structlog
from dramatiq import Middleware
from dramatiq.middleware import CurrentMessage

from producers._queue import SOURCES
from worker.base.settings import Settings
from worker.flush import ACCOUNT_THREAD_SHARE, Flusher
from worker.gate import MAX_SLEEP_MS
from worker.ingest import ingest_rows
from worker.observability.log_context import LogContext
from worker.observability.logs import configure_logging
from worker.queues import FLUSH, FLUSH_QUEUE, INGEST, INTENTS_QUEUE, RESOLVE
from worker.runtime.broker import broker_url, setup_broker, state_url
from worker.runtime.lifecycle import STOPPING, Lifecycle
from worker.runtime.local_pool import LocalPool
from worker.runtime.metrics_server import Metrics
from worker.runtime.parts import runtime
from worker.runtime.recovery import OutageRecovery
from worker.runtime.timer import LocalTimer
from worker.sweep import Sweeper, sweep_once
from worker.tag_names import NameResolver

#: The longest wait for a reserved call slot kept on this process's timer rather than in a
#: dramatiq delayed message.
LOCAL_WAIT_MAX_MS = 2_000
#: How long before its slot the timer hands such a flush to this process's own threads:
#: time to take the lease and the batch on a busy host (the flush sleeps what is left).
SLOT_LEAD_MS = 100

log = structlog.get_logger("tagsync.actors")
_timer = LocalTimer()
#: Sized from the worker's thread count at boot (``ThreadShare``).
_local = LocalPool("tagsync-flush")


def _low_rate(account: str) -> bool:
    served = runtime().accounts.get(account)
    return served is not None and served.gate.interval_ms > MAX_SLEEP_MS


def send_flush(account: str, tag_id: int, delay_ms: int, *, slot_at: int | None = None) -> None:
    """Enqueue a flush of (account, tag), after ``delay_ms``, for a reserved call slot.

    A flush that waits for its slot is asked to come back ``MAX_SLEEP_MS`` before it. For
    an account below 4 calls/s (every call of it waits so), a short such wait is kept on
    this process's timer, and the flush runs on this process's own threads ``SLOT_LEAD_MS``
    before the slot: no queue message at all, where it cost more CPU than the call
    (``worker.runtime.local_pool``). Faster accounts keep dramatiq's delay queue, whose
    slightly later arrival leaves their flushes less time asleep on threads (with a timer,
    one run in five of the rate benchmark fell from 0.98 to 0.93 of the limit).
    """
    if (
        slot_at is not None
        and 0 < delay_ms <= LOCAL_WAIT_MAX_MS
        and not STOPPING.is_set()
        and _low_rate(account)
    ):
        fire_s = max(0, delay_ms + MAX_SLEEP_MS - SLOT_LEAD_MS) / 1000
        _timer.call_later(
            fire_s, lambda: _local.submit(lambda: _flush_here(account, tag_id, slot_at))
        )
        return
    flush.send_with_options(args=(account, tag_id, slot_at), delay=delay_ms or None)


def _flush_here(account: str, tag_id: int, slot_at: int) -> None:
    """A flush on this process's own threads, as the ``flush`` actor would run it."""
    if STOPPING.is_set():
        flush.send(account, tag_id, slot_at)  # this process is stopping: another one takes it
        return
    structlog.contextvars.bind_contextvars(actor=FLUSH, queue="local")
    try:
        flusher().flush(account, tag_id, slot_at=slot_at)
    except Exception:
        # What dramatiq's retry would do for the actor: the tag comes back later, from the
        # queue. If Redis itself failed, this send fails too, and the sweep finds the tag
        # once the flush's schedule mark has expired.
        log.exception("flush.failed", account=account, tag=tag_id)
        flush.send_with_options(args=(account, tag_id, None), delay=flusher().backoff_min_ms)
    finally:
        structlog.contextvars.clear_contextvars()


def send_resolve(
    account: str,
    name: str,
    rows: list[list[Any]],
    attempt: int,
    delay_ms: int,
    slot_at: int | None = None,
) -> None:
    """Enqueue the resolution of a tag name for the rows that name it."""
    resolve_tag.send_with_options(
        args=(account, name, rows, attempt, slot_at), delay=delay_ms or None
    )


def _sweep() -> None:
    rt = runtime()
    sweep_once(rt.store, send_flush, accounts=rt.accounts)


class ThreadShare(Middleware):
    """Tells this process's flusher how many threads one account's flushes may hold; sizes
    the threads that run low-rate accounts' flushes like dramatiq's, and lets them end
    their calls when the process stops."""

    def after_worker_boot(self, broker: Any, worker: Any) -> None:
        threads = int(getattr(worker, "worker_threads", 0) or 0)
        if threads:
            flusher().account_threads = max(1, int(threads * ACCOUNT_THREAD_SHARE))
            _local.resize(threads)

    def after_worker_shutdown(self, broker: Any, worker: Any) -> None:
        # dramatiq has let its threads end their messages; flushes waiting on the timer go
        # to the queue now (STOPPING), for another process, and those on this process's own
        # threads end their calls.
        _timer.run_all_now()
        if not _local.wait_idle(flusher().lease_ms / 1000):
            log.warning("worker.local_flushes_cut", threads=_local.size)


configure_logging(Settings.from_env().log_format)
# Metrics only where the launcher prepared their directory (tagsync worker, demo, tests).
_metrics = [Metrics()] if os.environ.get("PROMETHEUS_MULTIPROC_DIR") else []
broker = setup_broker(
    extra_middleware=[
        *_metrics,
        LogContext(),
        CurrentMessage(),
        Sweeper(_sweep),
        OutageRecovery(broker_url()),  # the queue's Redis: its unacked messages
        ThreadShare(),
        Lifecycle(state_url()),  # heartbeats live with the state (status reads them)
    ]
)


@cache
def flusher() -> Flusher:
    """This process's flusher, built on first use (after dramatiq forked the process)."""
    rt = runtime()
    settings = rt.settings
    return Flusher(
        store=rt.store,
        accounts=rt.accounts,
        dead_letters=rt.dead_letters,
        send_flush=send_flush,
        max_attempts=settings.max_attempts,
        backoff_min_ms=settings.backoff_min_ms,
        backoff_max_ms=settings.backoff_max_ms,
        wechat_timeout_s=settings.wechat_timeout_s,
        stopping=STOPPING,
    )


@cache
def resolver() -> NameResolver:
    """This process's tag name resolver, built on first use."""
    rt = runtime()
    return NameResolver(
        names=rt.names,
        accounts=rt.accounts,
        dead_letters=rt.dead_letters,
        # The source of intents that waited for their tag's name is not carried: "unknown"
        merge=lambda rows: _merge(rows, "unknown"),
        send_resolve=send_resolve,
        create_tags=rt.settings.create_tags,
    )


def _merge(rows: Any, source: str = "python") -> None:
    rt = runtime()
    ingest_rows(
        rows,
        source=source,
        queue=rt.queue,
        store=rt.store,
        dead_letters=rt.dead_letters,
        send_flush=send_flush,
        accounts=rt.accounts,
        names=rt.names,
        send_resolve=send_resolve,
    )


@dramatiq.actor(queue_name=INTENTS_QUEUE, actor_name=INGEST, priority=0)
def ingest(rows: Any) -> None:
    """Merge a message of intent rows into the pending buffers."""
    message = CurrentMessage.get_current_message()
    source = message.options.get("source") if message is not None else None
    # How they came, for `tagsync explain`; anything else (an older producer) is "unknown"
    _merge(rows, source if source in SOURCES else "unknown")


@dramatiq.actor(queue_name=FLUSH_QUEUE, actor_name=RESOLVE, priority=5)
def resolve_tag(
    account: str, name: str, rows: list[list[Any]], attempt: int = 0, slot_at: int | None = None
) -> None:
    """Find (or create) the id of the tag ``name`` and merge the rows that name it."""
    resolver().resolve(account, name, rows, attempt, slot_at)


@dramatiq.actor(queue_name=FLUSH_QUEUE, actor_name=FLUSH, priority=10)
def flush(account: str, tag_id: int, slot_at: int | None = None) -> None:
    """Send the next batches of one (account, tag)."""
    flusher().flush(account, tag_id, slot_at=slot_at)
