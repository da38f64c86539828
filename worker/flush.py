"""Flushing one (account, tag): lease it, send its batches, settle every answer by the table.

One flush message = one ``Flusher.flush``:

1. take the tag's lease (another flush holds it: nothing to do; it looks again before
   letting go);
2. ``take`` the tag's next work: a split under way (``worker.split``) or a fresh batch of up
   to 50 openids of one op whose API is not paused;
3. ask the gate for a call slot; renew the lease; call WeChat;
4. settle the answer by its errcode's row in ``worker.wechat.errcodes``: apply, split,
   retry with backoff, pause, verify the tag, or dead-letter;
5. after a few calls, or at the first wait (linger, backoff, pause, a call slot further
   ahead than a short sleep), give the lease back and schedule the next flush with that
   delay, so dramatiq's threads stay free for other tags.

Every write of a flush checks its lease; once it is lost (``LeaseLost``) the flush stops at
once, logs ``flush.lease_lost`` and writes nothing more, so two flushes never work on one
tag. A dead letter is written once per intent (``worker.dead_letters``).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import structlog

from worker.accounts.directory import Account, AccountDirectory
from worker.base.backoff import backoff_ms
from worker.dead_letters import DeadLetter, DeadLetters
from worker.gate import BATCH_API, MAX_SLEEP_MS, AccountGate, pause_for
from worker.observability.metrics import (
    BATCH_SIZE,
    INTENT_AGE,
    INTENTS_APPLIED,
    PAUSES,
    RATE_LIMIT_DEFERRALS,
    RATE_LIMIT_SLOTS_MISSED,
    RATE_LIMIT_WAIT,
    observe_many,
)
from worker.pending import Batch, LeaseLost, PendingStore, Take
from worker.queues import SendFlush
from worker.split import SplitPlan, Verdict
from worker.tag_names import TagNames
from worker.wechat.client import CONNECT_TIMEOUT_S, READ_TIMEOUT_S, WeChatClient, last_sent_at
from worker.wechat.errcodes import UNKNOWN_ERRCODE_ATTEMPTS, Action, Errcode
from worker.wechat.errors import WeChatError

log = structlog.get_logger("tagsync.flush")

#: WeChat calls one flush makes before it yields to other tags (splits included)...
CALLS_PER_FLUSH = 32
#: ...or seconds it works before it does, whichever comes first: a flush of an account
#: calling back to back makes 32 calls in about 80 ms (each flush message costs about
#: 0.5 ms of CPU more than a call: 8 calls a flush was a sixth of a call's cost), while
#: slow answers (150 ms) end it after about 7 calls, so tags waiting for a thread still
#: get one within a second.
WORK_BUDGET_S = 1.0
#: The most one flush sleeps for call slots in all; a later slot reschedules it.
SLEEP_BUDGET_MS = 1000
#: How much longer than the slowest WeChat call a lease lasts (renewed before each call).
LEASE_MARGIN_MS = 5_000
#: A paused account's tags look again this often, so a lifted pause takes effect soon
#: (a flush is one Redis round trip: cheap even for 100 tags).
PAUSE_RECHECK_MS = 5_000
#: A lease set less than this long ago is not renewed before a call: it still outlives
#: the call's timeouts by ``LEASE_MARGIN_MS`` less this (one round trip saved a call).
RENEW_AFTER_S = 1.0
#: How late after its slot a call may still go (see ``Flusher._slot``).
LATE_CALL_MS = 10
#: How many slots in a row a flush may find itself late for before it yields.
LATE_CALL_TRIES = 3
#: The share of a process's threads the flushes of one account may hold at once, when the
#: deployment serves several accounts: an account whose answers are slow holds a thread per
#: call, and must leave the others threads to call with.
ACCOUNT_THREAD_SHARE = 0.5
#: How soon a flush turned away by that share comes back.
ACCOUNT_BUSY_RETRY_MS = 100
#: How long a ``tags/get`` answer is trusted when checking a 45159 (one call for a burst).
TAG_LIST_TTL_S = 2.0
#: How long a batch waits for a backlog at most, from its oldest intent: a flood that never
#: ends must not stop every call.
BACKLOG_HOLD_MS = 30_000
#: How soon a batch held for a backlog looks again.
BACKLOG_RECHECK_MS = 250


@dataclass(frozen=True)
class Wait:
    """Why and how long a tag waits before its next flush."""

    ms: int
    why: Literal["backoff", "slot"] = "backoff"
    #: For a slot wait: the slot the gate reserved (the next flush comes back for it).
    slot_at: int | None = None
    #: The wait is a pause's: looked at again when the flush lets go of the tag.
    pause: bool = False


@dataclass
class _Run:
    """One flush's account, lease and budgets."""

    account: str
    tag_id: int
    client: WeChatClient
    gate: AccountGate
    owner: str
    lease_ms: int
    slot_at: int | None
    calls_left: int = CALLS_PER_FLUSH
    sleep_left_ms: int = SLEEP_BUDGET_MS
    paused_ops: set[str] = field(default_factory=set)
    #: Ingest is merging a backlog of this account's intents: batches hold for it (only
    #: that account's: one account's flood must not hold another's calls).
    backlog: bool = False
    #: When the lease was last set (acquire, take or renew), monotonic seconds.
    lease_set_at: float = field(default_factory=time.monotonic)
    #: When the flush began, monotonic seconds (for ``WORK_BUDGET_S``).
    started: float = field(default_factory=time.monotonic)
    #: The tag's next work, taken by the ack of the batch before (``ack_take``).
    taken: Take | None = None
    #: Openids of the tag left pending at the last ack.
    waiting: int = 0
    #: When the call about to go is due (its slot), monotonic seconds.
    due: float | None = None


class Flusher:
    """Runs flushes of every served account's tags (one per process; thread-safe)."""

    def __init__(
        self,
        *,
        store: PendingStore,
        accounts: AccountDirectory,
        dead_letters: DeadLetters,
        send_flush: SendFlush,
        max_attempts: int = 30,
        backoff_min_ms: int = 1000,
        backoff_max_ms: int = 300_000,
        calls_per_flush: int = CALLS_PER_FLUSH,
        wechat_timeout_s: float = READ_TIMEOUT_S,
        stopping: threading.Event | None = None,
    ) -> None:
        self.store = store
        #: Set when the process stops: a flush ends after its call in flight and hands the
        #: tag on (its next flush goes to the queue, for whichever process is left).
        self.stopping = stopping or threading.Event()
        self.names = TagNames(store.redis)
        self.accounts = accounts
        self.dead_letters = dead_letters
        self.send_flush = send_flush
        self.max_attempts = max_attempts
        self.backoff_min_ms = backoff_min_ms
        self.backoff_max_ms = backoff_max_ms
        self.calls_per_flush = calls_per_flush
        self.lease_ms = int((CONNECT_TIMEOUT_S + wechat_timeout_s) * 1000) + LEASE_MARGIN_MS
        #: Most flushes of one account at once in this process (None: no limit); set from
        #: the worker's thread count when it boots.
        self.account_threads: int | None = None
        self._busy: Counter[str] = Counter()
        self._busy_lock = threading.Lock()
        #: Per account: when ``tags/get`` was last asked and the tag ids it listed.
        self._tag_lists: dict[str, tuple[float, frozenset[int]]] = {}
        self._tag_list_lock = threading.Lock()

    def flush(self, account: str, tag_id: int, *, slot_at: int | None = None) -> None:
        """Send the tag's next batches, then schedule what comes after."""
        served = self.accounts.get(account)
        if served is None:
            # Removed while its tags had work: they are kept (the sweep skips accounts not
            # served) until the account is added again or its intents are purged.
            log.warning("flush.account_not_served", account=account, tag=tag_id)
            return
        if not self._enter(account):
            self.send_flush(account, tag_id, ACCOUNT_BUSY_RETRY_MS, slot_at=slot_at)
            return
        try:
            self._flush(served, tag_id, slot_at)
        finally:
            with self._busy_lock:
                self._busy[account] -= 1

    def _enter(self, account: str) -> bool:
        """Count a flush of ``account`` in; False when the account holds its share of threads."""
        limit = self.account_threads
        if limit is not None and len(self.accounts.appids()) < 2:
            limit = None  # one account: every thread is its own
        with self._busy_lock:
            if limit is not None and self._busy[account] >= limit:
                return False
            self._busy[account] += 1
            return True

    def _flush(self, served: Account, tag_id: int, slot_at: int | None) -> None:
        account = served.appid
        owner = uuid.uuid4().hex
        if slot_at is None and self.store.scheduled(account, tag_id) == "slot":
            # Another flush of the tag holds a reserved call slot and comes back for it (this
            # one is a duplicate, e.g. a delayed look-again after a pause was lifted): taking
            # a second slot would leave one of them unused.
            return
        acquired, backlog = self.store.acquire_for_flush(account, tag_id, owner, self.lease_ms)
        if not acquired:
            # Another flush holds the tag; it looks at pending again before letting go.
            return
        run = _Run(
            account,
            tag_id,
            served.client,
            served.gate,
            owner,
            self.lease_ms,
            slot_at,
            calls_left=self.calls_per_flush,
            backlog=backlog,
        )
        try:
            wait = self._work(run)
            if run.taken is not None and run.taken.batch is not None:
                # Taken with the last ack, then the flush ended (its second ran out, or the
                # process is stopping): back to pending for the next flush.
                self.store.putback(run.taken.batch, owner)
        except LeaseLost:
            log.warning("flush.lease_lost", account=account, tag=tag_id)
            return
        except BaseException:
            # A bug or Redis trouble: hand the tag back (the sweep reschedules it).
            self.store.release(account, tag_id, owner, delay_ms=self.backoff_min_ms)
            raise
        delay = self.store.release(
            account,
            tag_id,
            owner,
            delay_ms=None if wait is None else wait.ms,
            why="backoff" if wait is None else wait.why,
        )
        if delay >= 0:
            slot = wait.slot_at if wait is not None and wait.why == "slot" else None
            if wait is not None and wait.pause and not run.gate.paused_ops(account)[0]:
                # The pause was lifted while this flush was settling its wait (quota reset
                # wakes waiting tags, but this one was not waiting yet): go again now.
                delay = 0
            self.send_flush(account, tag_id, delay, slot_at=slot)

    def _work(self, run: _Run) -> Wait | None:
        """Take and send work until it runs out, must wait, or the budget is spent."""
        # Paused APIs are learnt from the gate's answers (run.paused_ops), not read up front:
        # a pause is rare, a round trip on every flush is not.
        pause_ms = 0
        while self._more(run):
            took, run.taken = run.taken, None
            if took is None:
                took = self.store.take(
                    run.account,
                    run.tag_id,
                    run.owner,
                    run.lease_ms,
                    paused_ops=run.paused_ops,
                    hold_ms=self._hold_ms(run),
                )
                run.lease_set_at = time.monotonic()  # take renews the lease
            if took.restored:
                log.warning(
                    "flush.recovered", account=run.account, tag=run.tag_id, restored=took.restored
                )
            if took.kind == "gone":
                self._tag_gone(run, None)
                return None
            if took.kind in ("empty", "wait", "held"):
                # release() schedules the linger's end if anything is left (nothing while an
                # operator holds the tag: its release sends the flush)
                return None
            if took.kind == "hold":
                return Wait(min(took.wait_ms, BACKLOG_RECHECK_MS))
            if took.kind == "paused":
                pause_ms = pause_ms or run.gate.paused_ops(run.account)[1]
                return Wait(min(max(pause_ms, 1), PAUSE_RECHECK_MS), pause=True)
            assert took.batch is not None
            wait = self._send(run, took.batch)
            if wait is None and took.batch.plan is None and self._more(run):
                wait = self._next_slot_first(run, took.batch.op)
            if wait is not None:
                return wait
        return None

    def _more(self, run: _Run) -> bool:
        """May the flush make another call (calls and time left, the process not stopping)?"""
        return (
            run.calls_left > 0
            and time.monotonic() - run.started < WORK_BUDGET_S
            and not self.stopping.is_set()
        )

    @staticmethod
    def _hold_ms(run: _Run) -> int:
        return BACKLOG_HOLD_MS if run.backlog else 0

    def _next_slot_first(self, run: _Run, op: str) -> Wait | None:
        """After a call at a low rate, ask for the next call slot before taking a batch.

        The next slot of an account below 4 calls/s lies further ahead than a flush sleeps,
        so taking a batch first would only put it back: reserving the slot first saves that
        (two scripts moving 50 openids each way) on every call of such an account.
        """
        if run.gate.interval_ms <= MAX_SLEEP_MS or not run.waiting:
            return None  # (the ack of the call before counted what waits)
        admission = run.gate.admit(run.account, api=BATCH_API[op])
        if admission.kind == "paused":
            return None  # the take that follows sees the pause and settles its wait
        if admission.kind == "wait" or admission.wait_ms > run.sleep_left_ms:
            RATE_LIMIT_DEFERRALS.labels(run.account).inc()
            return Wait(max(0, admission.wait_ms - MAX_SLEEP_MS), "slot", admission.slot_at)
        run.slot_at = admission.slot_at  # the next batch's call uses this slot
        return None

    # -- one batch --------------------------------------------------------------------------

    def _send(self, run: _Run, batch: Batch) -> Wait | None:
        """Settle a batch: one call for a fresh one, the plan's steps for a split."""
        if batch.plan is not None:
            return self._split(run, batch)
        started = time.perf_counter()
        wait = self._slot(run, batch)
        if wait is not None:
            self.store.putback(batch, run.owner)  # never reached WeChat: no attempt counted
            return wait
        openids = batch.openids
        failure = self._call(run, batch, openids)
        if failure is None:
            applied = self._applied(run, batch, openids)
            self._log_batch(batch, len(openids), 0, applied=applied, calls=1, started=started)
            return None
        if failure.row.action is Action.SPLIT:
            plan = SplitPlan.after_refusal(openids, failure.errcode, failure.errmsg)
            self.store.suspect(batch, run.owner, plan)
            log.info(
                "split.start",
                **_about(batch),
                size=len(openids),
                errcode=failure.errcode,
            )
            return self._split(run, batch)
        return self._on_failure(run, batch, openids, failure, started=started)

    def _split(self, run: _Run, batch: Batch) -> Wait | None:
        """Run the split's plan until every openid is settled, or it must wait."""
        plan = batch.plan
        assert plan is not None
        started = time.perf_counter()
        applied = dead = 0
        while not plan.done:
            step = plan.next_step()
            if isinstance(step, Verdict):
                plan.settle(step)
                dead += self._dead_letter(
                    run, batch, [step.openid], "permanent", step.errcode, step.errmsg
                )
                continue
            if step is None:
                break
            if run.calls_left <= 0:
                return None  # the plan is saved; the next flush resumes it
            wait = self._slot(run, batch)
            if wait is not None:
                return wait
            failure = self._call(run, batch, step.openids)
            if failure is None:
                plan.clean(step)
                applied += self._applied(run, batch, step.openids)
            elif failure.row.action is Action.SPLIT:
                found = plan.refused(step, failure.errcode, failure.errmsg)
                if found:
                    dead += self._dead_letter(
                        run, batch, found, "permanent", failure.errcode, failure.errmsg
                    )
                else:
                    self.store.save_plan(batch, run.owner)
            else:
                return self._on_failure(run, batch, step.openids, failure, started=started)
        log.info(
            "batch",
            **_about(batch),
            size=applied + dead,
            errcode=0,
            attempt=batch.attempt,
            applied=applied,
            dead_lettered=dead,
            calls=plan.calls,
            call=batch.call_id,
            split=True,
            duration=round(time.perf_counter() - started, 4),
        )
        return None

    def _slot(self, run: _Run, batch: Batch) -> Wait | None:
        """Wait for a call slot of the batch's API and renew the lease; None when the call
        may go now.

        A call later than ``LATE_CALL_MS`` after its slot (a busy host) could share a second
        with the next slots: spaced slots leave 20 ms of slack (``RATE_SAFETY``). It goes
        if the gate can move the account's free slots back by its lateness
        (``AccountGate.late``); else its slot goes unused and a new one is taken.
        """
        for _ in range(LATE_CALL_TRIES):
            reserved, run.slot_at = run.slot_at, None  # a reserved slot is used once
            asked = time.monotonic()
            admission = run.gate.admit(run.account, api=BATCH_API[batch.op], slot_at=reserved)
            admitted = time.monotonic()
            if (
                reserved is not None
                and admission.slot_at != reserved
                and admission.kind != "paused"
            ):
                # Came back too late for it: the slot went unused and a new one was taken.
                RATE_LIMIT_SLOTS_MISSED.inc()
                log.info(
                    "gate.slot_missed",
                    account=run.account,
                    tag=run.tag_id,
                    late_ms=admission.late_ms,
                )
            if admission.kind == "paused":
                if admission.scope == "api":
                    run.paused_ops.add(batch.op)
                return Wait(min(admission.wait_ms, PAUSE_RECHECK_MS), pause=True)
            if admission.kind == "wait" or admission.wait_ms > run.sleep_left_ms:
                RATE_LIMIT_DEFERRALS.labels(run.account).inc()
                # Come back shortly before the slot, which stays reserved for this tag.
                return Wait(max(0, admission.wait_ms - MAX_SLEEP_MS), "slot", admission.slot_at)
            RATE_LIMIT_WAIT.observe(admission.wait_ms / 1000)
            # A moved slot's lateness is settled; any other's counts from its slot.
            late_before = 0 if admission.moved else admission.late_ms
            due = admitted + (admission.wait_ms - late_before) / 1000
            if admission.wait_ms:
                time.sleep(admission.wait_ms / 1000)
                run.sleep_left_ms -= admission.wait_ms
            if time.monotonic() - run.lease_set_at > RENEW_AFTER_S:
                self.store.renew(run.account, run.tag_id, run.owner, run.lease_ms)
                run.lease_set_at = time.monotonic()
            late_ms = (time.monotonic() - due) * 1000
            if late_ms <= LATE_CALL_MS or run.gate.late(run.account, late_ms):
                # The earliest the slot can be, for the check after the send: Redis ran the
                # admit after it was asked (a busy host's thread can wait for the GIL for
                # hundreds of ms before it reads the answer).
                run.due = asked + (admission.wait_ms - late_before) / 1000
                return None
            RATE_LIMIT_SLOTS_MISSED.inc()
            log.info("gate.late_call", account=run.account, tag=run.tag_id, late_ms=round(late_ms))
        return Wait(0)  # kept missing its slots (an overloaded host): let other work run

    def _call(self, run: _Run, batch: Batch, openids: list[str]) -> WeChatError | None:
        """One batch call (``_slot`` renewed the lease just before); the failure, if any."""
        run.calls_left -= 1
        BATCH_SIZE.labels(run.account, batch.op).observe(len(openids))
        batch.call_id = uuid.uuid4().hex[:12]  # in the batch log line and the fans' history
        call = run.client.batch_tag if batch.op == "tag" else run.client.batch_untag
        try:
            call(batch.tag_id, openids)
        except WeChatError as exc:
            return exc
        finally:
            self._sent_late(run)
        return None

    @staticmethod
    def _sent_late(run: _Run) -> None:
        """A call that left more than ``LATE_CALL_MS`` after its slot, though ``_slot`` saw
        it in time (its thread waited for the GIL in between: on a busy host, tens of ms),
        is accounted for as a late call after the fact: the free slots move back, so the
        calls after it keep the per-second limit. Below ``LATE_ACCOUNTING_RATE`` only."""
        sent, due, run.due = last_sent_at(), run.due, None
        if not run.gate.late_per_second or sent is None or due is None:
            return
        late_ms = (sent - due) * 1000
        if late_ms > LATE_CALL_MS:
            # As late as now, for all the gate knows: the answer came back by now.
            moved = run.gate.late(run.account, (time.monotonic() - due) * 1000)
            log.info(
                "gate.late_sent",
                account=run.account,
                tag=run.tag_id,
                late_ms=round(late_ms),
                moved=moved,
            )

    def _applied(self, run: _Run, batch: Batch, openids: list[str]) -> int:
        """Acknowledge applied openids; count them and their age.

        When the tag's next call may follow at once (a whole batch applied, calls left, the
        account's next slot near), the ack takes the next work too (``ack_take``)."""
        ts = {openid: batch.ts.get(openid) for openid in openids}
        whole = batch.plan is None and len(openids) == len(batch.openids)
        if whole and run.gate.interval_ms <= MAX_SLEEP_MS and self._more(run):
            acked, run.taken = self.store.ack_take(
                batch,
                run.owner,
                run.lease_ms,
                paused_ops=run.paused_ops,
                hold_ms=self._hold_ms(run),
            )
            run.lease_set_at = time.monotonic()  # its take renewed the lease
        else:
            acked = self.store.ack(batch, run.owner, None if whole else openids)
        run.waiting = acked.waiting
        INTENTS_APPLIED.labels(batch.account, batch.op).inc(acked.applied)
        now = time.time()
        observe_many(INTENT_AGE, [max(0.0, now - v) for v in ts.values() if v is not None])
        return acked.applied

    # -- failures -----------------------------------------------------------------------------

    def _on_failure(
        self,
        run: _Run,
        batch: Batch,
        openids: list[str],
        exc: WeChatError,
        *,
        started: float,
    ) -> Wait | None:
        """Settle a failed call by the action of its errcode's row."""
        row = exc.row
        if row.action is Action.PAUSE:
            return self._pause(run, batch, exc, row)
        if row.action is Action.VERIFY_TAG:
            listed = self._tag_listed(run, batch)
            if listed is False:
                self._tag_gone(run, exc)
                return None
            # Listed (WeChat said 45159 for a tag that exists: right after its creation,
            # or under concurrent calls), or unknown for now: a counted retry.
            return self._retry(run, batch, openids, exc, row, started=started)
        if row.action is Action.DEAD_LETTER:
            log.error(
                "batch.programming_error", account=run.account, tag=run.tag_id, errcode=exc.errcode
            )
            self._dead_letter(
                run, batch, openids, row.dead_letter or "programming_error", exc.errcode, exc.errmsg
            )
            if batch.plan is None and batch.ts:
                self.store.putback(batch, run.owner)
            return None
        # RETRY, RETRY_FEW, REPORT (no batch call should answer one), and REFRESH_TOKEN when
        # the resend with a fresh token failed too.
        return self._retry(run, batch, openids, exc, row, started=started)

    def _retry(
        self,
        run: _Run,
        batch: Batch,
        openids: list[str],
        exc: WeChatError,
        row: Errcode,
        *,
        started: float,
    ) -> Wait:
        # An errcode the table does not know is retried a few times only.
        few = row.action in (Action.RETRY_FEW, Action.REPORT)
        limit = min(self.max_attempts, UNKNOWN_ERRCODE_ATTEMPTS) if few else self.max_attempts
        if batch.plan is None:
            result = self.store.retry(batch, run.owner, max_attempts=limit)
        else:
            result = self.store.hold(batch, run.owner, openids, max_attempts=limit)
        dead = 0
        if result.exhausted:
            reason = (row.dead_letter or "unknown_errcode") if few else "retries_exhausted"
            dead = self._dead_letter(
                run,
                batch,
                [e.openid for e in result.exhausted],
                reason,
                exc.errcode,
                exc.errmsg,
                attempts={e.openid: e.attempts for e in result.exhausted},
                first_seen={e.openid: e.first_seen for e in result.exhausted},
            )
        wait = backoff_ms(result.streak, min_ms=self.backoff_min_ms, max_ms=self.backoff_max_ms)
        log.warning(
            "batch.retry",
            **_about(batch),
            size=len(openids),
            errcode=exc.errcode,
            error=str(exc),
            attempt=batch.attempt,
            streak=result.streak,
            backoff_ms=wait,
            dead_lettered=dead,
            duration=round(time.perf_counter() - started, 4),
        )
        return Wait(wait)

    def _pause(self, run: _Run, batch: Batch, exc: WeChatError, row: Errcode) -> Wait | None:
        """Pause the account or the API; keep every intent; no attempt counted."""
        ends, reason, api = pause_for(run.gate, run.account, exc, api=BATCH_API[batch.op])
        if batch.plan is None:
            self.store.putback(batch, run.owner)
        PAUSES.labels(run.account, reason, str(exc.errcode)).inc()
        level = log.error if row.level == "error" else log.warning
        level(
            "account.paused",
            account=run.account,
            api=api or "all",
            reason=reason,
            errcode=exc.errcode,
            meaning=row.meaning,
            until=ends,
        )
        if api is not None:
            # Only this API: the tag's other op may go on in this same flush.
            run.paused_ops.add(batch.op)
            return None
        return Wait(min(PAUSE_RECHECK_MS, max(0, int((ends - time.time()) * 1000))), pause=True)

    def _tag_listed(self, run: _Run, batch: Batch) -> bool | None:
        """Does ``tags/get`` list the tag? None when no call slot is near (unknown)."""
        with self._tag_list_lock:
            fetched_at, ids = self._tag_lists.get(run.account, (-1e9, frozenset()))
            # Only a listed tag is trusted from the cache: one created since it was
            # fetched (a tag name just resolved by creating it) must not be taken for gone.
            if time.monotonic() - fetched_at < TAG_LIST_TTL_S and batch.tag_id in ids:
                return True
        admission = run.gate.admit(run.account, api="tags/get")
        if admission.kind != "go" or admission.wait_ms > run.sleep_left_ms:
            return None
        if admission.wait_ms:
            time.sleep(admission.wait_ms / 1000)
            run.sleep_left_ms -= admission.wait_ms
        try:
            listed = frozenset(tag.id for tag in run.client.list_tags())
        except WeChatError as exc:
            log.warning("tag.verify_failed", account=run.account, tag=run.tag_id, error=str(exc))
            return None
        with self._tag_list_lock:
            self._tag_lists[run.account] = (time.monotonic(), listed)
        return batch.tag_id in listed

    def _tag_gone(self, run: _Run, exc: WeChatError | None) -> None:
        """The tag does not exist: dead-letter all its intents; ingest refuses new ones."""
        entries = self.store.tag_gone(run.account, run.tag_id, run.owner)
        letters = [
            DeadLetter.tag_gone(run.account, run.tag_id, op, openid, ts)
            for op, openid, ts in entries
        ]
        if exc is not None:  # WeChat's own answer, rather than the one tags/get implied
            letters = [replace(x, errcode=exc.errcode, errmsg=exc.errmsg) for x in letters]
        dead = self.dead_letters.add(letters)
        self.store.drop_tag(run.account, run.tag_id, run.owner)
        self.names.forget(run.account)  # a name may still point at the tag
        log.error("tag.gone", account=run.account, tag=run.tag_id, dead_lettered=dead)

    def _dead_letter(
        self,
        run: _Run,
        batch: Batch,
        openids: list[str],
        reason: str,
        errcode: int | None,
        errmsg: str,
        *,
        attempts: dict[str, int] | None = None,
        first_seen: dict[str, float | None] | None = None,
    ) -> int:
        """Write the dead letters (once per intent), then drop them from the batch."""
        self.store.renew(run.account, run.tag_id, run.owner, run.lease_ms)
        if batch.plan is not None:
            batch.plan.forget(openids)  # the plan saved with the drop no longer holds them
        self.dead_letters.add(
            DeadLetter(
                batch.account,
                batch.tag_id,
                batch.op,
                openid,
                batch.ts.get(openid, 0.0),
                reason=reason,
                errcode=errcode,
                errmsg=errmsg,
                attempts=(attempts or {}).get(openid, 1),
                first_seen=(first_seen or {}).get(openid),
            )
            for openid in openids
        )
        self.store.drop(batch, run.owner, openids)
        log.warning(
            "dead_letter",
            **_about(batch),
            reason=reason,
            errcode=errcode,
            count=len(openids),
        )
        return len(openids)

    def _log_batch(
        self,
        batch: Batch,
        size: int,
        errcode: int | None,
        *,
        applied: int,
        calls: int,
        started: float,
    ) -> None:
        log.info(
            "batch",
            **_about(batch),
            size=size,
            errcode=errcode,
            attempt=batch.attempt,
            applied=applied,
            dead_lettered=0,
            calls=calls,
            call=batch.call_id,
            duration=round(time.perf_counter() - started, 4),
        )


def _about(batch: Batch) -> dict[str, Any]:
    """The fields every log event about a batch carries."""
    return {"account": batch.account, "tag": batch.tag_id, "op": batch.op}
