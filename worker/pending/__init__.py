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
  ``failures``: the tag's current failure streak (for the backoff).

``tagsync:tags`` indexes every (account, tag) ever seen, for the sweep and ``status``; an
account holds at most 100 tags, so it stays small.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from redis import Redis
from redis.commands.core import Script

from producers.intents import Intent, Op
from worker.lua import script_text

#: The set of every "account:tag" that has had intents.
TAG_INDEX = "tagsync:tags"
#: Most openids in one WeChat batch call.
MAX_BATCH = 50
#: How long a scheduled flush is trusted to arrive before the sweep sends another, beyond its delay.
SCHED_GRACE_MS = 30_000
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


@dataclass
class IngestResult:
    """What merging intents did, and which flushes must be sent."""

    added: int = 0
    superseded: int = 0
    stale: int = 0
    #: (account, tag_id) -> delay in ms of a flush to send.
    flushes: dict[tuple[str, int], int] = field(default_factory=dict)


@dataclass(frozen=True)
class Batch:
    """Up to 50 openids of one op, now in flight under the flusher's lease."""

    account: str
    tag_id: int
    op: Op
    openids: list[str]
    ts: list[float]


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
        lib = script_text("worker.pending", "restore.lib.lua")
        for name in ("ingest", "take", "ack", "nack", "release", "sweep"):
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
        pipe = self.redis.pipeline(transaction=False)
        # Indexed before the intents land, so the sweep can always find a tag with pending.
        pipe.sadd(TAG_INDEX, *(f"{account}:{tag_id}" for account, tag_id in groups))
        calls: list[tuple[str, int]] = []
        for (account, tag_id), members in groups.items():
            keys = TagKeys(account, tag_id)
            for start in range(0, len(members), INGEST_CHUNK):
                args: list[Any] = [self.linger_ms, SCHED_GRACE_MS, MAX_BATCH]
                for intent in members[start : start + INGEST_CHUNK]:
                    args += (intent.op, intent.openid, repr(intent.ts))
                self._scripts["ingest"](
                    keys=[
                        keys.pending_tag,
                        keys.pending_untag,
                        keys.inflight,
                        keys.applied,
                        keys.sched,
                        keys.since,
                    ],
                    args=args,
                    client=pipe,
                )
                calls.append((account, tag_id))
        answers = pipe.execute()[1:]
        for (account, tag_id), (added, superseded, stale, delay) in zip(
            calls, answers, strict=True
        ):
            result.added += added
            result.superseded += superseded
            result.stale += stale
            if delay >= 0:
                current = result.flushes.get((account, tag_id))
                result.flushes[(account, tag_id)] = (
                    delay if current is None else min(current, delay)
                )
        return result

    # -- the flush's side ----------------------------------------------------------------

    def acquire(self, account: str, tag_id: int, owner: str, lease_ms: int) -> bool:
        """Take the tag's lease unless another flush holds it."""
        return bool(self.redis.set(TagKeys(account, tag_id).lease, owner, nx=True, px=lease_ms))

    def take(self, account: str, tag_id: int, owner: str, lease_ms: int) -> Take:
        """Move the next batch to in-flight (renewing the lease); see ``take.lua``."""
        keys = TagKeys(account, tag_id)
        answer = self._scripts["take"](
            keys=[keys.pending_tag, keys.pending_untag, keys.inflight, keys.lease, keys.since],
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
        pairs = answer[3:]
        batch = Batch(
            account,
            tag_id,
            "untag" if op == "untag" else "tag",
            [_text(o) for o in pairs[0::2]],
            [float(t) for t in pairs[1::2]],
        )
        return Take("batch", batch=batch, restored=int(answer[2]))

    def ack(self, batch: Batch, owner: str) -> int:
        """The batch was applied; -1 if the lease was lost (the next holder resends it)."""
        keys = TagKeys(batch.account, batch.tag_id)
        return int(
            self._scripts["ack"](
                keys=[keys.inflight, keys.applied, keys.lease, keys.failures],
                args=[owner, self.ordering_window_s],
            )
        )

    def nack(self, batch: Batch, owner: str) -> tuple[int, int]:
        """The batch failed transiently: back to pending. Returns (restored, failure streak)."""
        keys = TagKeys(batch.account, batch.tag_id)
        restored, streak = self._scripts["nack"](
            keys=[keys.pending_tag, keys.pending_untag, keys.inflight, keys.lease, keys.failures],
            args=[owner],
        )
        return int(restored), int(streak)

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
