"""The pending buffers in Redis: where intents are coalesced, leased, taken and settled.

Per (account, tag), under the hash tag ``{account:tag}`` so one tag's keys share a Redis
Cluster slot, every multi-key change is one Lua script (``worker/lua/*.lua``):

- ``pending:tag`` / ``pending:untag``: zsets openid -> event ts; a fan sits in one at most,
  holding its latest intent (last write wins; ties go to the later arrival);
- ``inflight``: the batch a flush is sending (hash openid -> ts, and ``~op``);
- ``applied``: zset openid -> ts of the last applied intent, kept for the ordering window so
  a late, older intent is dropped as stale instead of undoing a newer one;
- ``lease``: who may flush the tag now; ``sched``: a flush message is on its way;
  ``since``: when the oldest pending intent started waiting (for the linger);
  ``failures``: the tag's current failure streak (for the backoff);
- ``attempts`` / ``first_seen``: per openid, failed attempts and when the first failed;
- ``gone``: WeChat said the tag does not exist; ingest dead-letters its intents.

``tagsync:tags`` indexes every (account, tag) ever seen, for the sweep and ``status``; an
account holds at most 100 tags, so it stays small. ``tagsync:gone`` indexes gone tags.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from redis import Redis
from redis.commands.core import Script
from redis.exceptions import NoScriptError

from producers.intents import Intent, Op
from worker.lua import script_text

#: The set of every "account:tag" that has had intents.
TAG_INDEX = "tagsync:tags"
#: The set of every "account:tag" WeChat said does not exist.
GONE_INDEX = "tagsync:gone"
#: Most openids in one WeChat batch call.
MAX_BATCH = 50
#: How long a scheduled flush is trusted to arrive before the sweep sends another, beyond its delay.
SCHED_GRACE_MS = 10_000
#: Seconds after which a process puts its tags in the index again.
INDEX_REFRESH_S = 60.0
#: Intents per ingest script call (keeps one call short: Redis runs nothing else meanwhile).
INGEST_CHUNK = 500


@dataclass(frozen=True)
class TagKeys:
    """The Redis keys of one (account, tag)."""

    account: str
    tag_id: int

    def _key(self, name: str) -> str:
        return f"tagsync:{{{self.account}:{self.tag_id}}}:{name}"

    @property
    def pending_tag(self) -> str:
        return self._key("pending:tag")

    @property
    def pending_untag(self) -> str:
        return self._key("pending:untag")

    @property
    def inflight(self) -> str:
        return self._key("inflight")

    @property
    def applied(self) -> str:
        return self._key("applied")

    @property
    def sched(self) -> str:
        return self._key("sched")

    @property
    def since(self) -> str:
        return self._key("since")

    @property
    def lease(self) -> str:
        return self._key("lease")

    @property
    def failures(self) -> str:
        return self._key("failures")

    @property
    def attempts(self) -> str:
        return self._key("attempts")

    @property
    def first_seen(self) -> str:
        return self._key("first_seen")

    @property
    def gone(self) -> str:
        return self._key("gone")


@dataclass
class IngestResult:
    """What merging intents did, and which flushes must be sent."""

    added: int = 0
    superseded: int = 0
    stale: int = 0
    #: (account, tag_id) -> delay in ms of a flush to send.
    flushes: dict[tuple[str, int], int] = field(default_factory=dict)
    #: Intents refused because WeChat said their tag does not exist (to dead-letter).
    gone: list[Intent] = field(default_factory=list)


@dataclass(frozen=True)
class Exhausted:
    """An in-flight intent that used up its attempts (to dead-letter, then drop)."""

    openid: str
    ts: float
    attempts: int
    first_seen: float | None


@dataclass(frozen=True)
class Batch:
    """Up to 50 openids of one op, now in flight under the flusher's lease."""

    account: str
    tag_id: int
    op: Op
    openids: list[str]
    ts: list[float]
    #: 1 for a tag's first try, more while its failure streak lasts.
    attempt: int = 1


@dataclass(frozen=True)
class Take:
    """The answer of ``take``: a batch, nothing to do, wait for the linger, or lease lost."""

    kind: Literal["batch", "empty", "wait", "lost"]
    batch: Batch | None = None
    wait_ms: int = 0
    restored: int = 0


@dataclass(frozen=True)
class TagStatus:
    """The backlog of one (account, tag)."""

    account: str
    tag_id: int
    pending_tag: int
    pending_untag: int
    inflight: int
    oldest_ts: float | None
    leased: bool
    scheduled: str | None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class PendingStore:
    """The Redis side of coalescing and flushing (one per process; thread-safe)."""

    def __init__(
        self, redis: Redis, *, linger_ms: int = 1000, ordering_window_s: float = 3600.0
    ) -> None:
        self.redis = redis
        self.linger_ms = linger_ms
        self.ordering_window_s = ordering_window_s
        self._scripts: dict[str, Script] = {}
        #: Tags this process put in the index lately (re-sent every minute, in case Redis
        #: lost the index, e.g. restarted without persistence).
        self._indexed: set[str] = set()
        self._indexed_at = time.monotonic()
        lib = script_text("worker.pending", "restore.lib.lua")
        for name in (
            "ingest",
            "take",
            "ack",
            "nack",
            "release",
            "sweep",
            "drop",
            "tag_gone",
            "drop_tag",
        ):
            self._scripts[name] = redis.register_script(
                lib + script_text("worker.pending", f"{name}.lua")
            )

    # -- producers' side -----------------------------------------------------------------

    def ingest(self, intents: Iterable[Intent]) -> IngestResult:
        """Merge intents into their tags' pending buffers; say which flushes to send."""
        groups: dict[tuple[str, int], list[Intent]] = defaultdict(list)
        for intent in intents:
            groups[(intent.account, intent.tag_id)].append(intent)
        result = IngestResult()
        if not groups:
            return result
        calls: list[list[Intent]] = []
        commands: list[tuple[str, list[Any]]] = []
        for (account, tag_id), members in groups.items():
            keys = TagKeys(account, tag_id)
            for start in range(0, len(members), INGEST_CHUNK):
                chunk = members[start : start + INGEST_CHUNK]
                args: list[Any] = [self.linger_ms, SCHED_GRACE_MS, MAX_BATCH]
                for intent in chunk:
                    args += (intent.op, intent.openid, repr(intent.ts))
                tag_keys = [
                    keys.pending_tag, keys.pending_untag, keys.inflight, keys.applied,
                    keys.sched, keys.since, keys.gone, keys.attempts, keys.first_seen,
                ]  # fmt: skip
                commands.append((f"{account}:{tag_id}", [*tag_keys, *args]))
                calls.append(chunk)
        answers = self._run_ingest(commands)
        for chunk, (added, superseded, stale, delay, gone) in zip(calls, answers, strict=True):
            account, tag_id = chunk[0].account, chunk[0].tag_id
            if gone:
                result.gone.extend(chunk)
                continue
            result.added += added
            result.superseded += superseded
            result.stale += stale
            if delay >= 0:
                current = result.flushes.get((account, tag_id))
                result.flushes[(account, tag_id)] = (
                    delay if current is None else min(current, delay)
                )
        return result

    def _run_ingest(self, commands: list[tuple[str, list[Any]]]) -> list[Any]:
        """Run ingest scripts in one round trip (EVALSHA in a plain pipeline).

        redis-py checks SCRIPT EXISTS before every pipeline holding Script objects, which
        would double the round trips of one-intent messages; the script is loaded here
        once, and again only if Redis answers NOSCRIPT (after a restart).
        """
        script = self._scripts["ingest"]
        for attempt in (1, 2):
            pipe = self.redis.pipeline(transaction=False)
            # Indexed before the intents land, so the sweep always finds a tag with pending.
            if time.monotonic() - self._indexed_at > INDEX_REFRESH_S:
                self._indexed, self._indexed_at = set(), time.monotonic()
            fresh = {member for member, _ in commands} - self._indexed
            if fresh:
                pipe.sadd(TAG_INDEX, *fresh)
            for _, command in commands:
                pipe.evalsha(script.sha, 9, *command)
            try:
                answers = pipe.execute()
            except NoScriptError:
                if attempt == 2:
                    raise
                self.redis.script_load(script.script)
                continue
            self._indexed |= fresh
            return answers[1:] if fresh else answers
        raise AssertionError("unreachable")

    # -- the flush's side ----------------------------------------------------------------

    def acquire(self, account: str, tag_id: int, owner: str, lease_ms: int) -> bool:
        """Take the tag's lease unless another flush holds it."""
        return bool(self.redis.set(TagKeys(account, tag_id).lease, owner, nx=True, px=lease_ms))

    def take(self, account: str, tag_id: int, owner: str, lease_ms: int) -> Take:
        """Move the next batch to in-flight (renewing the lease); see ``take.lua``."""
        keys = TagKeys(account, tag_id)
        answer = self._scripts["take"](
            keys=[
                keys.pending_tag,
                keys.pending_untag,
                keys.inflight,
                keys.lease,
                keys.since,
                keys.failures,
            ],
            args=[owner, self.linger_ms, MAX_BATCH, lease_ms],
        )
        kind = _text(answer[0])
        if kind == "lost":
            return Take("lost")
        if kind == "empty":
            return Take("empty", restored=int(answer[1]))
        if kind == "wait":
            return Take("wait", wait_ms=int(answer[1]), restored=int(answer[2]))
        op = _text(answer[1])
        pairs = answer[4:]
        batch = Batch(
            account,
            tag_id,
            "untag" if op == "untag" else "tag",
            [_text(o) for o in pairs[0::2]],
            [float(t) for t in pairs[1::2]],
            attempt=int(answer[3]),
        )
        return Take("batch", batch=batch, restored=int(answer[2]))

    def ack(self, batch: Batch, owner: str, openids: list[str] | None = None) -> int:
        """The batch (or ``openids`` of it) was applied; -1 if the lease was lost."""
        keys = TagKeys(batch.account, batch.tag_id)
        return int(
            self._scripts["ack"](
                keys=[
                    keys.inflight,
                    keys.applied,
                    keys.lease,
                    keys.failures,
                    keys.attempts,
                    keys.first_seen,
                ],
                args=[owner, self.ordering_window_s, *(openids or [])],
            )
        )

    def _nack(self, batch: Batch, owner: str, count: bool, max_attempts: int) -> list[Any]:
        keys = TagKeys(batch.account, batch.tag_id)
        return list(
            self._scripts["nack"](
                keys=[
                    keys.pending_tag,
                    keys.pending_untag,
                    keys.inflight,
                    keys.lease,
                    keys.failures,
                    keys.attempts,
                    keys.first_seen,
                ],
                args=[owner, 1 if count else 0, max_attempts],
            )
        )

    def nack(
        self, batch: Batch, owner: str, *, max_attempts: int
    ) -> tuple[int, int, list[Exhausted]]:
        """The batch failed: what is left of it goes back to pending, one attempt counted.

        Returns (restored, failure streak, the intents that used up their attempts: they
        stay in flight until ``drop``).
        """
        answer = self._nack(batch, owner, True, max_attempts)
        rest = answer[2:]
        exhausted = [
            Exhausted(
                _text(rest[i]), float(rest[i + 1]), int(rest[i + 2]), float(rest[i + 3]) / 1000
            )
            for i in range(0, len(rest), 4)
        ]
        return int(answer[0]), int(answer[1]), exhausted

    def putback(self, batch: Batch, owner: str) -> int:
        """What is left of the batch goes back to pending unchanged (it never reached WeChat)."""
        return int(self._nack(batch, owner, False, 0)[0])

    def drop(self, batch: Batch, owner: str, openids: list[str]) -> int:
        """Take dead-lettered openids out of flight for good; -1 if the lease was lost."""
        keys = TagKeys(batch.account, batch.tag_id)
        return int(
            self._scripts["drop"](
                keys=[keys.inflight, keys.lease, keys.attempts, keys.first_seen],
                args=[owner, *openids],
            )
        )

    def tag_gone(self, account: str, tag_id: int) -> list[tuple[str, str, float]]:
        """Mark the tag gone; return every pending and in-flight (op, openid, ts) of it."""
        keys = TagKeys(account, tag_id)
        self.redis.sadd(GONE_INDEX, f"{account}:{tag_id}")
        flat = self._scripts["tag_gone"](
            keys=[keys.pending_tag, keys.pending_untag, keys.inflight, keys.gone]
        )
        return [
            (_text(flat[i]), _text(flat[i + 1]), float(flat[i + 2])) for i in range(0, len(flat), 3)
        ]

    def drop_tag(self, account: str, tag_id: int) -> None:
        """Forget a gone tag's buffers (after its intents were dead-lettered)."""
        keys = TagKeys(account, tag_id)
        self._scripts["drop_tag"](
            keys=[
                keys.pending_tag, keys.pending_untag, keys.inflight,
                keys.attempts, keys.first_seen, keys.since,
            ]
        )  # fmt: skip

    def wake(self, account: str, *, settle_s: float = 0.5) -> int:
        """Forget the delayed flushes of an account's tags that wait out a backoff or pause.

        The sweep then sends their flushes within seconds (after a pause is lifted). A
        flush that met the pause just before it was lifted may still be scheduling its
        wait, so the look is repeated once after ``settle_s``.
        """
        woken = 0
        for look in range(2):
            if look:
                time.sleep(settle_s)
            for tag_account, tag_id in self.tags():
                key = TagKeys(tag_account, tag_id).sched
                if tag_account == account and self.redis.get(key) == b"backoff":
                    woken += int(self.redis.delete(key))
        return woken

    def gone_tags(self) -> list[tuple[str, int]]:
        """Every (account, tag) marked gone."""
        found = []
        for member in self.redis.smembers(GONE_INDEX):
            account, _, tag = _text(member).rpartition(":")
            found.append((account, int(tag)))
        return sorted(found)

    def clear_gone(self, account: str, tag_id: int) -> None:
        """The tag exists again (``tags/get`` lists it): accept its intents again."""
        self.redis.delete(TagKeys(account, tag_id).gone)
        self.redis.srem(GONE_INDEX, f"{account}:{tag_id}")

    def release(
        self, account: str, tag_id: int, owner: str, *, backoff_ms: int | None = None
    ) -> int:
        """Give up the lease; the delay of the next flush to send, or -1 for none."""
        keys = TagKeys(account, tag_id)
        return int(
            self._scripts["release"](
                keys=[
                    keys.pending_tag,
                    keys.pending_untag,
                    keys.inflight,
                    keys.lease,
                    keys.sched,
                    keys.since,
                ],
                args=[
                    owner,
                    self.linger_ms,
                    SCHED_GRACE_MS,
                    MAX_BATCH,
                    -1 if backoff_ms is None else backoff_ms,
                ],
            )
        )

    # -- sweep and status ----------------------------------------------------------------

    def tags(self) -> list[tuple[str, int]]:
        """Every (account, tag) that has had intents."""
        found = []
        for member in self.redis.smembers(TAG_INDEX):
            account, _, tag = _text(member).rpartition(":")
            found.append((account, int(tag)))
        return sorted(found)

    def sweep(self) -> list[tuple[str, int]]:
        """Claim a flush for every tag with work but no flush running or scheduled."""
        tags = self.tags()
        pipe = self.redis.pipeline(transaction=False)
        for account, tag_id in tags:
            keys = TagKeys(account, tag_id)
            self._scripts["sweep"](
                keys=[keys.pending_tag, keys.pending_untag, keys.inflight, keys.lease, keys.sched],
                args=[SCHED_GRACE_MS],
                client=pipe,
            )
        return [tag for tag, claimed in zip(tags, pipe.execute(), strict=True) if claimed]

    def status(self) -> list[TagStatus]:
        """The backlog of every tag, read in one round trip."""
        tags = self.tags()
        pipe = self.redis.pipeline(transaction=False)
        for account, tag_id in tags:
            keys = TagKeys(account, tag_id)
            pipe.zcard(keys.pending_tag)
            pipe.zcard(keys.pending_untag)
            pipe.hlen(keys.inflight)
            pipe.zrange(keys.pending_tag, 0, 0, withscores=True)
            pipe.zrange(keys.pending_untag, 0, 0, withscores=True)
            pipe.exists(keys.lease)
            pipe.get(keys.sched)
        answers = pipe.execute()
        result = []
        for i, (account, tag_id) in enumerate(tags):
            n_tag, n_untag, inflight, first_tag, first_untag, leased, sched = answers[
                i * 7 : i * 7 + 7
            ]
            oldest = [score for _, score in (*first_tag, *first_untag)]
            result.append(
                TagStatus(
                    account,
                    tag_id,
                    int(n_tag),
                    int(n_untag),
                    max(0, int(inflight) - 1),  # the '~op' field is not an openid
                    min(oldest) if oldest else None,
                    bool(leased),
                    _text(sched) if sched else None,
                )
            )
        return result
