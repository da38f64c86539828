"""Flushing one (account, tag): lease it, send batches of up to 50, settle each answer.

A flush never sleeps long: when it must wait (linger, backoff, rate limit, pause) it ends
and schedules the next flush with that delay, so dramatiq's threads stay free for other
tags. After a few batches it ends too and re-enqueues itself behind other tags' flushes.

Every failed call is settled by the action its errcode has in the table
(``worker.wechat.errcodes``): retry with backoff, pause the account, bisect the batch to
find the bad openids, dead-letter the tag, or dead-letter a bug.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from worker.dead_letters import DeadLetter, DeadLetters
from worker.gate import CREDENTIAL_PAUSE_MS, MAX_SLEEP_MS, AccountGate
from worker.metrics import (
    BATCH_SIZE,
    INTENT_AGE,
    INTENTS_APPLIED,
    PAUSES,
    RATE_LIMIT_DEFERRALS,
    RATE_LIMIT_WAIT,
)
from worker.pending import Batch, PendingStore
from worker.wechat.client import WeChatClient
from worker.wechat.errcodes import Action
from worker.wechat.errors import OpenidError, WeChatError

log = structlog.get_logger("tagsync.flush")

#: Batches one flush sends before it yields to other tags.
BATCHES_PER_FLUSH = 4
#: How much longer than the slowest WeChat call a lease lasts (it is renewed per batch).
LEASE_MARGIN_MS = 5_000
#: A paused account's tags look again this often, so a lifted pause takes effect soon
#: (a flush is one Redis round trip: cheap even for 100 tags).
PAUSE_RECHECK_MS = 5_000

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
    dead_lettered: int = 0
    errcode: int | None = 0
    calls: int = 1
    #: Set when the tag must wait before its next batch.
    wait_ms: int | None = None


class Flusher:
    """Runs flushes for one account's WeChat client against the pending store."""

    def __init__(
        self,
        store: PendingStore,
        client: WeChatClient,
        gate: AccountGate,
        dead_letters: DeadLetters,
        send_flush: SendFlush,
        *,
        max_attempts: int = 30,
        backoff_min_ms: int = 1000,
        backoff_max_ms: int = 300_000,
        batches_per_flush: int = BATCHES_PER_FLUSH,
    ) -> None:
        self.store = store
        self.client = client
        self.gate = gate
        self.dead_letters = dead_letters
        self.send_flush = send_flush
        self.max_attempts = max_attempts
        self.backoff_min_ms = backoff_min_ms
        self.backoff_max_ms = backoff_max_ms
        self.batches_per_flush = batches_per_flush
        connect, read = client.timeouts
        self.lease_ms = int((connect + read) * 1000) + LEASE_MARGIN_MS

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
                wait = self._send(took.batch, owner).wait_ms
                if wait is not None:
                    break
        finally:
            delay = self.store.release(account, tag_id, owner, backoff_ms=wait)
            if delay >= 0:
                self.send_flush(account, tag_id, delay)

    # -- one batch -------------------------------------------------------------------------

    def _call(self, batch: Batch, openids: list[str]) -> None:
        BATCH_SIZE.labels(batch.op).observe(len(openids))
        call = self.client.batch_tag if batch.op == "tag" else self.client.batch_untag
        call(batch.tag_id, openids)

    def _applied(self, batch: Batch, owner: str, openids: list[str] | None = None) -> int:
        """Acknowledge applied openids (all of the batch by default); count them and their age."""
        acked = self.store.ack(batch, owner, openids)
        if acked < 0:
            log.warning("flush.lease_lost", account=batch.account, tag=batch.tag_id, op=batch.op)
            return 0
        INTENTS_APPLIED.labels(batch.op).inc(acked)
        now = time.time()
        applied = set(openids) if openids is not None else None
        for openid, ts in zip(batch.openids, batch.ts, strict=True):
            if applied is None or openid in applied:
                INTENT_AGE.observe(max(0.0, now - ts))
        return acked

    def _admit(self, batch: Batch) -> int | None:
        """Wait for a call slot; None to go, else how long the tag must wait."""
        admission = self.gate.admit(batch.account)
        if admission.kind == "go":
            RATE_LIMIT_WAIT.observe(admission.wait_ms / 1000)
            if admission.wait_ms:
                time.sleep(admission.wait_ms / 1000)
            return None
        if admission.kind == "paused":
            return min(admission.wait_ms, PAUSE_RECHECK_MS)
        RATE_LIMIT_DEFERRALS.inc()
        # Come back when a slot is near enough to sleep for, not when it is due.
        return max(0, admission.wait_ms - MAX_SLEEP_MS)

    def _send(self, batch: Batch, owner: str) -> Outcome:
        started = time.perf_counter()
        wait = self._admit(batch)
        if wait is not None:
            # Not sent: back to pending as it was, no attempt counted.
            self.store.putback(batch, owner)
            return Outcome(errcode=None, calls=0, wait_ms=wait)
        try:
            self._call(batch, batch.openids)
        except WeChatError as exc:
            outcome = self._on_failure(batch, owner, exc)
        else:
            outcome = Outcome(applied=self._applied(batch, owner))
        log.info(
            "batch",
            account=batch.account,
            tag=batch.tag_id,
            op=batch.op,
            size=len(batch.openids),
            errcode=outcome.errcode,
            attempt=batch.attempt,
            applied=outcome.applied,
            dead_lettered=outcome.dead_lettered,
            calls=outcome.calls,
            duration=round(time.perf_counter() - started, 4),
        )
        return outcome

    # -- failures --------------------------------------------------------------------------

    def _on_failure(self, batch: Batch, owner: str, exc: WeChatError) -> Outcome:
        """Settle a failed batch by the action of its errcode in the table."""
        action = exc.row.action if exc.row is not None else Action.RETRY
        if action is Action.BISECT and isinstance(exc, OpenidError):
            return self._bisect(batch, owner, exc)
        if action in (Action.PAUSE_MINUTE, Action.PAUSE_DAY, Action.PAUSE_ALARM):
            return self._pause(batch, owner, exc, action)
        if action is Action.DEAD_LETTER_TAG:
            return self._tag_gone(batch, exc)
        if action in (Action.DEAD_LETTER_BUG, Action.REPORT):
            log.error(
                "batch.programming_error",
                account=batch.account,
                tag=batch.tag_id,
                errcode=exc.errcode,
            )
            dead = self._dead_letter(batch, owner, batch.openids, "programming_error", exc)
            return Outcome(errcode=exc.errcode, dead_lettered=dead)
        # RETRY, and REFRESH_TOKEN when the resend with a fresh token failed too.
        return self._retry(batch, owner, exc)

    def _retry(self, batch: Batch, owner: str, exc: WeChatError) -> Outcome:
        _, streak, exhausted = self.store.nack(batch, owner, max_attempts=self.max_attempts)
        dead = 0
        if exhausted:
            by_openid = {e.openid: e for e in exhausted}
            dead = self._dead_letter(
                batch, owner, list(by_openid), "retries_exhausted", exc,
                attempts={o: e.attempts for o, e in by_openid.items()},
                first_seen={o: e.first_seen for o, e in by_openid.items()},
            )  # fmt: skip
        wait = backoff_ms(streak, min_ms=self.backoff_min_ms, max_ms=self.backoff_max_ms)
        log.warning(
            "batch.retry",
            account=batch.account,
            tag=batch.tag_id,
            errcode=exc.errcode,
            error=str(exc),
            streak=streak,
            backoff_ms=wait,
            exhausted=len(exhausted),
        )
        return Outcome(errcode=exc.errcode, dead_lettered=dead, wait_ms=wait)

    def _pause(self, batch: Batch, owner: str, exc: WeChatError, action: Action) -> Outcome:
        how = {Action.PAUSE_MINUTE: "minute", Action.PAUSE_DAY: "day"}.get(action, "for")
        reason = "credentials" if action is Action.PAUSE_ALARM else "quota"
        ends = self.gate.pause(
            batch.account,
            reason=reason,
            errcode=exc.errcode,
            how=how,
            ms=CREDENTIAL_PAUSE_MS,
            message=str(exc),
        )
        self.store.putback(batch, owner)
        PAUSES.labels(reason, str(exc.errcode)).inc()
        level = log.error if action is Action.PAUSE_ALARM else log.warning
        level(
            "account.paused",
            account=batch.account,
            reason=reason,
            errcode=exc.errcode,
            meaning=exc.row.meaning if exc.row else "",
            until=ends,
        )
        return Outcome(
            errcode=exc.errcode,
            wait_ms=min(PAUSE_RECHECK_MS, max(0, int((ends - time.time()) * 1000))),
        )

    def _bisect(self, batch: Batch, owner: str, first: OpenidError) -> Outcome:
        """Split the batch until the bad openids stand alone; apply the rest, dead-letter those.

        k bad openids among 50 cost at most 2 * k * 6 more calls (six halvings from 50 to 1).
        """
        outcome = Outcome(errcode=first.errcode)
        parts: list[tuple[list[str], OpenidError]] = [(batch.openids, first)]
        while parts:
            openids, error = parts.pop()
            if len(openids) == 1:
                outcome.dead_lettered += self._dead_letter(
                    batch, owner, openids, "permanent", error
                )
                continue
            middle = (len(openids) + 1) // 2
            for half in (openids[middle:], openids[:middle]):
                wait = self._admit(batch)
                if wait is not None:
                    # Out of call slots: the unsettled openids go back to pending.
                    self.store.putback(batch, owner)
                    outcome.wait_ms = wait
                    return outcome
                outcome.calls += 1
                try:
                    self._call(batch, half)
                except OpenidError as exc:
                    parts.append((half, exc))
                except WeChatError as exc:
                    # Something else went wrong meanwhile: settle what is left by its own rule.
                    settled = self._on_failure(batch, owner, exc)
                    settled.applied += outcome.applied
                    settled.dead_lettered += outcome.dead_lettered
                    settled.calls += outcome.calls
                    return settled
                else:
                    outcome.applied += self._applied(batch, owner, half)
        return outcome

    def _tag_gone(self, batch: Batch, exc: WeChatError) -> Outcome:
        """The tag does not exist: dead-letter all its intents; ingest refuses new ones."""
        entries = self.store.tag_gone(batch.account, batch.tag_id)
        now = time.time()
        self.dead_letters.add(
            DeadLetter(
                batch.account,
                batch.tag_id,
                op,
                openid,
                ts,
                reason="tag_gone",
                errcode=exc.errcode,
                errmsg=exc.errmsg,
                first_seen=now,
            )
            for op, openid, ts in entries
        )
        self.store.drop_tag(batch.account, batch.tag_id)
        log.error("tag.gone", account=batch.account, tag=batch.tag_id, dead_lettered=len(entries))
        return Outcome(errcode=exc.errcode, dead_lettered=len(entries))

    def _dead_letter(
        self,
        batch: Batch,
        owner: str,
        openids: list[str],
        reason: str,
        exc: WeChatError,
        *,
        attempts: dict[str, int] | None = None,
        first_seen: dict[str, float | None] | None = None,
    ) -> int:
        """Write the dead letters, then drop them from flight: a crash between repeats them."""
        ts_of = dict(zip(batch.openids, batch.ts, strict=True))
        self.dead_letters.add(
            DeadLetter(
                batch.account,
                batch.tag_id,
                batch.op,
                openid,
                ts_of.get(openid, 0.0),
                reason=reason,
                errcode=exc.errcode,
                errmsg=exc.errmsg,
                attempts=(attempts or {}).get(openid, 1),
                first_seen=(first_seen or {}).get(openid),
            )
            for openid in openids
        )
        self.store.drop(batch, owner, openids)
        log.warning(
            "dead_letter",
            account=batch.account,
            tag=batch.tag_id,
            reason=reason,
            errcode=exc.errcode,
            count=len(openids),
        )
        return len(openids)
