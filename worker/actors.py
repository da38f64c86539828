"""The dramatiq actors: what ``tagsync worker`` runs (``dramatiq worker.actors``).

- ``ingest`` (queue ``tagsync.intents``): merges intents into the pending buffers;
- ``flush`` (queue ``tagsync.flush``): sends one tag's next batches to WeChat.
Flushes have the higher priority, so a flood of intents never starves them.
"""

from __future__ import annotations

import os
from typing import Any

import dramatiq

from producers.intents import INGEST_ACTOR, QUEUE_NAME
from worker.broker import setup_broker
from worker.flush import Flusher
from worker.ingest import ingest_rows
from worker.log_context import LogContext
from worker.logs import configure_logging
from worker.metrics_server import Metrics
from worker.runtime import runtime
from worker.settings import Settings
from worker.sweep import Sweeper, sweep_once

#: The queue of flush messages.
FLUSH_QUEUE = "tagsync.flush"


def send_flush(account: str, tag_id: int, delay_ms: int) -> None:
    """Enqueue a flush of (account, tag), after ``delay_ms``."""
    flush.send_with_options(args=(account, tag_id), delay=delay_ms or None)


def _sweep() -> None:
    rt = runtime()
    sweep_once(rt.store, send_flush, client=rt.client)


configure_logging(Settings.from_env().log_format)
# Metrics only where the launcher prepared their directory (tagsync worker, demo, tests).
_metrics = [Metrics()] if os.environ.get("PROMETHEUS_MULTIPROC_DIR") else []
broker = setup_broker(extra_middleware=[*_metrics, LogContext(), Sweeper(_sweep)])

_flusher: Flusher | None = None


def flusher() -> Flusher:
    """This process's flusher."""
    global _flusher
    if _flusher is None:
        rt = runtime()
        _flusher = Flusher(
            rt.store,
            rt.client,
            rt.gate,
            rt.dead_letters,
            send_flush,
            max_attempts=rt.settings.max_attempts,
            backoff_min_ms=rt.settings.backoff_min_ms,
            backoff_max_ms=rt.settings.backoff_max_ms,
        )
    return _flusher


@dramatiq.actor(queue_name=QUEUE_NAME, actor_name=INGEST_ACTOR, priority=10)
def ingest(rows: Any) -> None:
    """Merge a message of intent rows into the pending buffers."""
    rt = runtime()
    accounts = frozenset({rt.client.appid})
    ingest_rows(rows, rt.store, rt.dead_letters, send_flush, accounts=accounts)


@dramatiq.actor(queue_name=FLUSH_QUEUE, actor_name="flush", priority=0)
def flush(account: str, tag_id: int) -> None:
    """Send the next batches of one (account, tag)."""
    flusher().flush(account, tag_id)
