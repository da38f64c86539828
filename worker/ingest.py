"""Ingest: check a queue message's intent rows and merge them into the pending buffers.

Nothing a producer sends may crash the worker: a row that fails the intent contract, or
names an account this worker has no credentials for, is dead-lettered, not raised. Rows
that name their tag are merged under its id when the account's name cache knows it, else
handed to the name resolver (``worker.tag_names``) in one message per (account, name).
"""

from __future__ import annotations

import math
import time
from collections import Counter, defaultdict
from collections.abc import Container
from typing import Any

import structlog
from redis import Redis

from producers.intents import Intent, InvalidIntent, parse_row
from worker.dead_letters import DeadLetter, DeadLetters
from worker.observability.metrics import INTENTS_RECEIVED, INTENTS_STALE, INTENTS_SUPERSEDED
from worker.pending import IngestResult, PendingStore
from worker.queues import BACKLOG_MESSAGES, SendFlush, queued_intents
from worker.tag_names import SendResolve, TagNames

log = structlog.get_logger("tagsync.ingest")

#: How often a process looks at the intent queue's length, s: an LLEN per message (and a
#: mark per message while a backlog lasted) was a fifth of ingest's CPU when every intent
#: came in a message of its own.
QUEUE_LOOK_EVERY_S = 0.1
#: How often one process renews an account's backlog mark (the mark lasts 1 s).
MARK_EVERY_S = 0.25


class BacklogWatch:
    """Whether intent messages pile up in the queue, looked at no more than every
    ``QUEUE_LOOK_EVERY_S``; while they do, the accounts being merged are marked so that
    their flushes hold batches for them (``PendingStore.mark_backlog``)."""

    def __init__(self) -> None:
        self._looked_at = -math.inf
        self._backlog = False
        self._marked: dict[str, float] = {}

    def note(self, store: PendingStore, accounts: set[str], queue: Redis | None = None) -> None:
        """Intents of ``accounts`` were just merged: mark them if a backlog is building
        (``queue``: the queue's Redis, when it is not the store's)."""
        now = time.monotonic()
        if now - self._looked_at >= QUEUE_LOOK_EVERY_S:
            self._looked_at = now
            self._backlog = queued_intents(queue or store.redis) >= BACKLOG_MESSAGES
        if not self._backlog:
            return
        due = [a for a in accounts if now - self._marked.get(a, -math.inf) >= MARK_EVERY_S]
        if due:
            store.mark_backlog(due)
            self._marked.update(dict.fromkeys(due, now))


#: This process's watch (every ingest of the process shares its looks).
BACKLOG = BacklogWatch()


def ingest_rows(
    rows: Any,
    *,
    store: PendingStore,
    dead_letters: DeadLetters,
    send_flush: SendFlush,
    accounts: Container[str],
    names: TagNames,
    send_resolve: SendResolve,
    backlog: BacklogWatch = BACKLOG,
    source: str = "python",
    queue: Redis | None = None,
) -> IngestResult:
    """Merge a message's rows into pending; send the flushes it calls for (``source``: how
    they came, kept in each fan's history)."""
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
    result = store.ingest(intents, source=source)
    if intents:
        backlog.note(store, {intent.account for intent in intents}, queue)
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
