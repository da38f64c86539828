"""Flushing one (account, tag): lease it, send batches of up to 50, settle each answer.

A flush never sleeps: when it must wait (linger, backoff) it ends and schedules the next
flush with that delay, so dramatiq's threads stay free for other tags. After a few batches
it ends too and re-enqueues itself behind other tags' flushes (fairness).
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from worker.pending import Batch, PendingStore
from worker.wechat.client import WeChatClient
from worker.wechat.errors import WeChatError

log = structlog.get_logger("tagsync.flush")

#: Batches one flush sends before it yields to other tags.
BATCHES_PER_FLUSH = 4
#: How much longer than the slowest WeChat call a lease lasts (it is renewed per batch).
LEASE_MARGIN_MS = 5_000

#: Sends a flush message: (account, tag_id, delay_ms).
SendFlush = Callable[[str, int, int], None]


def backoff_ms(streak: int, *, min_ms: int, max_ms: int, rng: random.Random | None = None) -> int:
    """Exponential backoff with full jitter: uniform in [0, min(max, min * 2^(streak-1))]."""
    cap = min(max_ms, min_ms * 2 ** min(max(streak - 1, 0), 32))
    return int((rng or random).uniform(0, cap))


@dataclass
class Outcome:
    """How one batch ended."""

    applied: int = 0
    errcode: int | None = None
    #: Set when the tag must wait before its next batch.
    backoff_ms: int | None = None


class Flusher:
    """Runs flushes for one account's WeChat client against the pending store."""

    def __init__(
        self,
        store: PendingStore,
        client: WeChatClient,
        send_flush: SendFlush,
        *,
        backoff_min_ms: int = 1000,
        backoff_max_ms: int = 300_000,
        batches_per_flush: int = BATCHES_PER_FLUSH,
        lease_ms: int | None = None,
    ) -> None:
        self.store = store
        self.client = client
        self.send_flush = send_flush
        self.backoff_min_ms = backoff_min_ms
        self.backoff_max_ms = backoff_max_ms
        self.batches_per_flush = batches_per_flush
        connect, read = client.timeouts
        self.lease_ms = lease_ms or int((connect + read) * 1000) + LEASE_MARGIN_MS

    def flush(self, account: str, tag_id: int) -> None:
        """Send the tag's next batches, then schedule what comes after."""
        owner = uuid.uuid4().hex
        if not self.store.acquire(account, tag_id, owner, self.lease_ms):
            # Another flush holds the tag; it looks at pending again before letting go.
            return
        wait: int | None = None
        try:
            for _ in range(self.batches_per_flush):
                took = self.store.take(account, tag_id, owner, self.lease_ms)
                if took.restored:
                    log.warning(
                        "flush.recovered", account=account, tag=tag_id, restored=took.restored
                    )
                if took.batch is None:
                    break
                wait = self._send(took.batch, owner).backoff_ms
                if wait is not None:
                    break
        finally:
            delay = self.store.release(account, tag_id, owner, backoff_ms=wait)
            if delay >= 0:
                self.send_flush(account, tag_id, delay)

    def _send(self, batch: Batch, owner: str) -> Outcome:
        call = self.client.batch_tag if batch.op == "tag" else self.client.batch_untag
        started = time.perf_counter()
        try:
            call(batch.tag_id, batch.openids)
        except WeChatError as exc:
            outcome = self._on_failure(batch, owner, exc)
        else:
            acked = self.store.ack(batch, owner)
            if acked < 0:
                log.warning(
                    "flush.lease_lost", account=batch.account, tag=batch.tag_id, op=batch.op
                )
            outcome = Outcome(applied=max(acked, 0), errcode=0)
        log.info(
            "batch",
            account=batch.account,
            tag=batch.tag_id,
            op=batch.op,
            size=len(batch.openids),
            errcode=outcome.errcode,
            duration=round(time.perf_counter() - started, 4),
        )
        return outcome

    def _on_failure(self, batch: Batch, owner: str, exc: WeChatError) -> Outcome:
        """Settle a failed batch. Every failure is retried with backoff for now.

        This is where the errcode table's actions plug in (bisection, dead letters, pauses).
        """
        _, streak = self.store.nack(batch, owner)
        wait = backoff_ms(streak, min_ms=self.backoff_min_ms, max_ms=self.backoff_max_ms)
        log.warning(
            "batch.retry",
            account=batch.account,
            tag=batch.tag_id,
            errcode=exc.errcode,
            error_class=exc.error_class.value,
            streak=streak,
            backoff_ms=wait,
        )
        return Outcome(errcode=exc.errcode, backoff_ms=wait)
