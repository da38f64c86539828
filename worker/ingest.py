"""Ingest: check a queue message's intent rows and merge them into the pending buffers.

Nothing a producer sends may crash the worker: a row that fails the intent contract, or
names an account this worker has no credentials for, is dead-lettered, not raised. Rows
that name their tag are merged under its id when the account's name cache knows it, else
handed to the name resolver (``worker.tag_names``) in one message per (account, name).
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Container
from typing import Any

import structlog

from producers.intents import Intent, InvalidIntent, parse_row
from worker.dead_letters import DeadLetter, DeadLetters
from worker.observability.metrics import INTENTS_RECEIVED, INTENTS_STALE, INTENTS_SUPERSEDED
from worker.pending import IngestResult, PendingStore
from worker.queues import BACKLOG_MESSAGES, SendFlush, queued_intents
from worker.tag_names import SendResolve, TagNames

log = structlog.get_logger("tagsync.ingest")


def ingest_rows(
    rows: Any,
    *,
    store: PendingStore,
    dead_letters: DeadLetters,
    send_flush: SendFlush,
    accounts: Container[str],
    names: TagNames,
    send_resolve: SendResolve,
) -> IngestResult:
    """Merge a message's rows into pending; send the flushes it calls for."""
    if not isinstance(rows, list):
        rows = [rows]
    intents: list[Intent] = []
    named: list[Intent] = []
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
        if intent.tag_name is not None:
            named.append(intent)
            continue
        intents.append(intent)
    if named:
        intents += _resolve(named, names, send_resolve)
    if rejected:
        dead_letters.add(rejected)
        log.warning("ingest.rejected", count=len(rejected), reason=rejected[0].reason)
    result = store.ingest(intents)
    if intents and queued_intents(store.redis) >= BACKLOG_MESSAGES:
        store.mark_backlog({intent.account for intent in intents})
    # One counter update per account and op, not per intent: a message has up to 1,000.
    for (account, op), count in Counter((i.account, i.op) for i in intents).items():
        INTENTS_RECEIVED.labels(account, op).inc(count)
    INTENTS_SUPERSEDED.inc(result.superseded)
    INTENTS_STALE.inc(result.stale)
    if result.gone:
        dead_letters.add(
            DeadLetter.tag_gone(i.account, i.tag_id, i.op, i.openid, i.ts) for i in result.gone
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


def _resolve(named: list[Intent], names: TagNames, send_resolve: SendResolve) -> list[Intent]:
    """The named intents whose names the cache knows, resolved; the others sent to the
    resolver, one message per (account, name)."""
    resolved: list[Intent] = []
    unknown: dict[tuple[str, str], list[list[Any]]] = defaultdict(list)
    by_account: dict[str, list[Intent]] = defaultdict(list)
    for intent in named:
        by_account[intent.account].append(intent)
    for account, group in by_account.items():
        ids = names.lookup(account, sorted({i.tag_name for i in group if i.tag_name}))
        for intent in group:
            assert intent.tag_name is not None
            tag_id = ids.get(intent.tag_name)
            if tag_id is None:
                unknown[(account, intent.tag_name)].append(intent.row())
            else:
                resolved.append(intent.resolved(tag_id))
    for (account, name), rows in unknown.items():
        send_resolve(account, name, rows, 0, 0, None)
    if unknown:
        log.info("ingest.names_to_resolve", names=len(unknown), intents=len(named) - len(resolved))
    return resolved
