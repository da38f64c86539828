"""Ingest: check a queue message's intent rows and merge them into the pending buffers.

Nothing a producer sends may crash the worker: a row that fails the intent contract, or
names an account this worker has no credentials for, is dead-lettered, not raised.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Container
from typing import Any

import structlog

from producers.intents import Intent, InvalidIntent, parse_row
from worker.dead_letters import DeadLetter, DeadLetters
from worker.observability.metrics import INTENTS_RECEIVED, INTENTS_STALE, INTENTS_SUPERSEDED
from worker.pending import IngestResult, PendingStore
from worker.queues import BACKLOG_MESSAGES, SendFlush, queued_intents

log = structlog.get_logger("tagsync.ingest")


def ingest_rows(
    rows: Any,
    *,
    store: PendingStore,
    dead_letters: DeadLetters,
    send_flush: SendFlush,
    accounts: Container[str],
) -> IngestResult:
    """Merge a message's rows into pending; send the flushes it calls for."""
    if not isinstance(rows, list):
        rows = [rows]
    intents: list[Intent] = []
    rejected: list[DeadLetter] = []
    # Each account of the message is looked up once (an unknown one costs a Redis read).
    served: dict[str, bool] = {}
    for row in rows:
        try:
            intent = parse_row(row)
        except InvalidIntent as exc:
            rejected.append(DeadLetter.for_row(row, str(exc)))
            continue
        if intent.account not in served:
            served[intent.account] = intent.account in accounts
        if not served[intent.account]:
            rejected.append(
                DeadLetter(
                    intent.account,
                    intent.tag_id,
                    intent.op,
                    intent.openid,
                    intent.ts,
                    reason="unknown_account",
                    errmsg="no account of this deployment: not in TAGSYNC_ACCOUNTS, not authorized",
                    first_seen=time.time(),
                )
            )
            continue
        intents.append(intent)
    if rejected:
        dead_letters.add(rejected)
        log.warning("ingest.rejected", count=len(rejected), reason=rejected[0].reason)
    result = store.ingest(intents)
    if intents and queued_intents(store.redis) >= BACKLOG_MESSAGES:
        store.mark_backlog({intent.account for intent in intents})
    # One counter update per op, not per intent: messages carry up to 1,000 intents.
    for op, count in Counter(intent.op for intent in intents).items():
        INTENTS_RECEIVED.labels(op).inc(count)
    INTENTS_SUPERSEDED.inc(result.superseded)
    INTENTS_STALE.inc(result.stale)
    if result.gone:
        dead_letters.add(
            DeadLetter(
                i.account,
                i.tag_id,
                i.op,
                i.openid,
                i.ts,
                reason="tag_gone",
                errcode=45159,
                errmsg="the tag does not exist",
                first_seen=time.time(),
            )
            for i in result.gone
        )
        log.warning("ingest.tag_gone", count=len(result.gone))
    for (account, tag_id), delay in result.flushes.items():
        send_flush(account, tag_id, delay)
    log.debug(
        "ingest",
        intents=len(intents),
        added=result.added,
        superseded=result.superseded,
        stale=result.stale,
        rejected=len(rejected),
    )
    return result
