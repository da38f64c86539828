"""``PendingStore``: the Redis side of coalescing, leasing, taking and settling intents.

Every multi-key change is one Lua script beside this module (``*.lua``, each with a
KEYS/ARGV/Returns header); ``keys.SCRIPT_KEYS`` says which keys each one gets and
``_run`` is the one way a script is called. Scripts that settle a batch check the flush's
lease and answer "lost" when another flush took the tag; the store raises ``LeaseLost``
then, and the flush stops without writing anything more.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, cast

from redis import Redis
from redis.cluster import RedisCluster
from redis.commands.core import Script
from redis.exceptions import (
    AskError,
    ClusterDownError,
    ClusterError,
    MovedError,
    NoScriptError,
    RedisError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from producers.intents import Intent, Op
from producers.redis_url import is_cluster_client
from worker.base.lua import run_script, script_text, text
from worker.pending.keys import (
    COMPOSED,
    GONE_INDEX,
    SCRIPT_KEYS,
    TAG_INDEX,
    TagKeys,
    parse_member,
)
from worker.split import SplitPlan
from worker.wechat.client import MAX_BATCH

#: How long an account counts as backlogged after ingest last merged its intents from a
#: long queue (refreshed by every such message; it ends soon after the backlog does).
BACKLOG_MARK_MS = 1000
#: How long a scheduled flush is trusted to arrive before the sweep sends another, beyond its
#: delay: a lost or badly late flush message costs the tag this long (a duplicate costs little).
SCHED_GRACE_MS = 3_000
#: Seconds after which a process puts its tags in the index again.
INDEX_REFRESH_S = 60.0
#: Intents per ingest script call (keeps one call short: Redis runs nothing else meanwhile).
INGEST_CHUNK = 500
#: How long each fan's last intent per tag is kept for ``tagsync explain`` by default, s
#: (``TAGSYNC_HISTORY_HOURS``).
DEFAULT_HISTORY_S = 24 * 3600.0
#: Tries of a replicated ingest on a cluster (with a backoff up to 1 s): about a minute,
#: after which the message is retried by dramatiq.
REPLICATED_TRIES = 64


class NotReplicated(RedisError):
    """Fewer replicas than asked held merged intents in time: ingest's message must not
    be acked (dramatiq retries it; a merge of the same intents again is a no-op)."""

    def __init__(self, message: str, final: bool = False) -> None:
        super().__init__(message)
        self.final = final


def _check_replicas(acked: int, wanted: int) -> None:
    if acked < wanted:
        raise NotReplicated(f"{acked} of {wanted} replicas acknowledged merged intents")


#: What a cluster's pipeline of scripts waits out: slots moving (redis-py's ClusterError is
#: its redirections exhausted), a failover.
CLUSTER_PIPELINE_RETRY = (
    ClusterError, MovedError, AskError, TryAgainError, ClusterDownError, RedisConnectionError,
    RedisTimeoutError,
)  # fmt: skip
#: What a replicated ingest on a cluster waits out: slots moving, a failover, replicas away.
REPLICATED_RETRY = (
    MovedError, AskError, TryAgainError, ClusterDownError, RedisConnectionError,
    RedisTimeoutError, NotReplicated,
)  # fmt: skip


class LeaseLost(Exception):
    """Another flush holds the tag now: the caller must stop and write nothing more."""


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
    """An intent that used up its attempts (to dead-letter, then drop)."""

    openid: str
    ts: float
    attempts: int
    first_seen: float | None


@dataclass(frozen=True)
class Retried:
    """The answer of a counted failure: what went back to pending and the failure streak."""

    restored: int
    streak: int
    exhausted: list[Exhausted]


@dataclass
class Batch:
    """Openids of one op of one tag under a flush's lease: fresh from pending, or a split."""

    account: str
    tag_id: int
    op: Op
    #: openid -> event ts of the intent being sent.
    ts: dict[str, float]
    #: 1 for a tag's first try, more while its failure streak lasts.
    attempt: int = 1
    #: The split under way (None for a fresh batch).
    plan: SplitPlan | None = None
    #: The id of the batch's latest WeChat call (in the ``batch`` log line and the fans'
    #: history: ``tagsync explain`` names it).
    call_id: str = ""

    @property
    def openids(self) -> list[str]:
        """The openids still to settle, in batch order."""
        return list(self.ts)

    @property
    def hash_key(self) -> str:
        """The Redis hash holding the batch: the in-flight batch or the op's split."""
        keys = TagKeys(self.account, self.tag_id)
        return keys.key("inflight") if self.plan is None else keys.split(self.op)

    def settled(self, openids: Iterable[str]) -> None:
        """Forget openids applied or dead-lettered."""
        for openid in openids:
            self.ts.pop(openid, None)


@dataclass(frozen=True)
class Take:
    """The answer of ``take``: work, nothing to do, wait (linger or paused), or a gone tag."""

    kind: Literal["batch", "empty", "wait", "hold", "paused", "gone", "held"]
    batch: Batch | None = None
    wait_ms: int = 0
    restored: int = 0


class Acked(NamedTuple):
    """The answer of ``ack``: openids acknowledged, and openids of the tag left pending."""

    applied: int
    waiting: int


@dataclass(frozen=True)
class TagStatus:
    """The backlog of one (account, tag)."""

    account: str
    tag_id: int
    pending_tag: int
    pending_untag: int
    inflight: int
    splitting: int
    oldest_ts: float | None
    leased: bool
    scheduled: str | None

    @property
    def unsettled(self) -> int:
        """Intents of the tag not yet applied or dead-lettered: pending, in flight, splitting."""
        return self.pending_tag + self.pending_untag + self.inflight + self.splitting


def _backlog_key(account: str) -> str:
    return f"tagsync:{{{account}}}:backlog"


def _source(name: str) -> str:
    """A script's text: the shared functions, then its parts as local functions (COMPOSED)."""
    parts = [script_text("worker.pending", "lib.lua")]
    for part in COMPOSED.get(name, ()):
        body = script_text("worker.pending", f"{part}.lua")
        parts.append(f"local function {part}(KEYS, ARGV)\n{body}\nend\n")
    return "".join(parts) + script_text("worker.pending", f"{name}.lua")


def _take(account: str, tag_id: int, answer: list[Any]) -> Take:
    """A Take from take.lua's answer."""
    kind = text(answer[0])
    if kind == "lost":
        raise LeaseLost
    if kind == "gone":
        return Take("gone")
    if kind in ("empty", "paused", "held"):
        return Take(kind, restored=int(answer[1]))  # type: ignore[arg-type]
    if kind in ("wait", "hold"):
        return Take(kind, wait_ms=int(answer[1]), restored=int(answer[2]))  # type: ignore[arg-type]
    op: Op = "untag" if text(answer[1]) == "untag" else "tag"
    pairs = text(answer[5]).split()
    ts = dict(zip(pairs[0::2], map(float, pairs[1::2]), strict=True))
    plan = SplitPlan.from_json(answer[4]) if answer[4] else None
    if plan is not None:
        # Fans that got a newer intent meanwhile left the split: forget them here too.
        plan.reconcile(ts)
    batch = Batch(account, tag_id, op, ts, attempt=int(answer[3]), plan=plan)
    return Take("batch", batch=batch, restored=int(answer[2]))


def _exhausted(flat: list[Any]) -> list[Exhausted]:
    return [
        Exhausted(text(flat[i]), float(flat[i + 1]), int(flat[i + 2]), float(flat[i + 3]) / 1000)
        for i in range(0, len(flat), 4)
    ]


class PendingStore:
    """The Redis side of coalescing and flushing (one per process; thread-safe)."""

    def __init__(
        self,
        redis: Redis,
        *,
        linger_ms: int = 1000,
        ordering_window_s: float = 3600.0,
        history_s: float = DEFAULT_HISTORY_S,
        wait_replicas: int = 0,
        wait_ms: int = 1000,
    ) -> None:
        self.redis = redis
        #: Replicas that must hold merged intents before ingest returns (and its message is
        #: acked): set when the queue is not on the state's Redis, so the order of one
        #: replication stream no longer keeps a merge ahead of its message's ack.
        self.wait_replicas = wait_replicas
        self.wait_ms = wait_ms
        self.linger_ms = linger_ms
        self.ordering_window_s = ordering_window_s
        #: How long each fan's last accepted and applied intent per tag is kept for
        #: ``tagsync explain`` (0: not kept).
        self.history_ms = int(history_s * 1000)
        self._scripts: dict[str, Script] = {
            name: redis.register_script(_source(name)) for name in SCRIPT_KEYS
        }
        #: Tags this process put in the index lately (re-sent every minute, in case Redis
        #: lost the index, e.g. restarted without persistence).
        self._indexed: set[str] = set()
        self._indexed_at = time.monotonic()

    def _run(
        self,
        script: str,
        keys: TagKeys,
        args: list[Any],
        *,
        batch: str | None = None,
    ) -> Any:
        names = keys.encoded(script, batch=batch)
        return run_script(self.redis, self._scripts[script], names, args)

    # -- producers' side -----------------------------------------------------------------

    def ingest(self, intents: Iterable[Intent], *, source: str = "python") -> IngestResult:
        """Merge intents into their tags' pending buffers; say which flushes to send.
        ``source`` (how they came: python, jsonl, http) goes into each fan's history."""
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
                args: list[Any] = [
                    self.linger_ms, SCHED_GRACE_MS, MAX_BATCH, source, self.history_ms
                ]  # fmt: skip
                for intent in chunk:
                    args += (intent.op, intent.openid, repr(intent.ts))
                commands.append((keys.member, [*keys.for_script("ingest"), *args]))
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
        if self.wait_replicas and is_cluster_client(self.redis):
            return self._run_ingest_replicated(commands)
        script = self._scripts["ingest"]
        n_keys = len(SCRIPT_KEYS["ingest"])
        # Indexed before the intents land, so the sweep always finds a tag with pending.
        if time.monotonic() - self._indexed_at > INDEX_REFRESH_S:
            self._indexed, self._indexed_at = set(), time.monotonic()
        fresh = {member for member, _ in commands} - self._indexed

        def build(pipe: Any) -> None:
            if fresh:
                pipe.sadd(TAG_INDEX, *fresh)
            for _, command in commands:
                pipe.evalsha(script.sha, n_keys, *command)
            if self.wait_replicas:  # one connection: WAIT covers the scripts above
                pipe.wait(self.wait_replicas, self.wait_ms)

        answers = self._execute(build, "ingest")
        self._indexed |= fresh
        if self.wait_replicas:
            _check_replicas(int(answers.pop()), self.wait_replicas)
        return answers[1:] if fresh else answers

    def _execute(self, build: Callable[[Any], None], script: str) -> list[Any]:
        """A pipeline of EVALSHAs of ``script`` (and other commands) that ``build`` fills.

        Its script is loaded (on every primary of a cluster) when Redis answers NOSCRIPT:
        after a restart, a failover, or on a node a slot just moved to; redis-py loads
        none for a cluster's pipeline. On a cluster, a slot half moved or a node away
        makes redis-py give up on the pipeline (redirections exhausted): it is run again,
        whole (every script of tagsync is safe to repeat), for about a minute.
        """
        cluster = is_cluster_client(self.redis)
        wait = 0.05
        for attempt in range(REPLICATED_TRIES):
            pipe = self.redis.pipeline(transaction=False)
            build(pipe)
            try:
                return list(pipe.execute())
            except NoScriptError:
                if attempt:
                    raise
                self.redis.script_load(self._scripts[script].script)
            except CLUSTER_PIPELINE_RETRY:
                if not cluster or attempt == REPLICATED_TRIES - 1:
                    raise
                time.sleep(wait)
                wait = min(wait * 2, 1.0)
        raise AssertionError("unreachable")

    def _run_ingest_replicated(self, commands: list[tuple[str, list[Any]]]) -> list[Any]:
        """Ingest on a cluster, each primary's scripts and a WAIT in one pipeline on one
        connection (WAIT counts the replicas holding this connection's writes: the cluster
        client's own pipeline would spread them over its pool).

        A slot that moved, a node away or a failover under way: the slot map is read again
        and every script run again (a merge of the same intents is a no-op), until
        ``REPLICATED_TRIES`` end.
        """
        cluster = cast(RedisCluster, self.redis)
        script = self._scripts["ingest"]
        n_keys = len(SCRIPT_KEYS["ingest"])
        self.redis.sadd(TAG_INDEX, *{member for member, _ in commands})
        wait = 0.05
        for _ in range(REPLICATED_TRIES):
            answers: list[Any] = [None] * len(commands)
            try:
                by_node: dict[str, list[int]] = defaultdict(list)
                for index, (_, command) in enumerate(commands):
                    node_of = cluster.get_node_from_key(command[0])  # type: ignore[no-untyped-call]
                    by_node[node_of.name].append(index)
                for name, indexes in by_node.items():
                    found = cluster.get_node(node_name=name)  # type: ignore[no-untyped-call]
                    node = cluster.get_redis_connection(found)
                    pipe = node.pipeline(transaction=False)
                    for index in indexes:
                        pipe.evalsha(script.sha, n_keys, *commands[index][1])
                    pipe.wait(self.wait_replicas, self.wait_ms)
                    try:
                        *done, acked = pipe.execute()
                    except NoScriptError:
                        node.script_load(script.script)
                        raise
                    _check_replicas(int(acked), self.wait_replicas)
                    for index, answer in zip(indexes, done, strict=True):
                        answers[index] = answer
                return answers
            except (NoScriptError, *REPLICATED_RETRY) as exc:
                if isinstance(exc, NotReplicated) and exc.final:
                    raise
                cluster.nodes_manager.initialize()
                time.sleep(wait)
                wait = min(wait * 2, 1.0)
        raise NotReplicated(f"{self.wait_replicas} replicas did not acknowledge in time", True)

    # -- a flush's side: the lease ---------------------------------------------------------

    def acquire(self, account: str, tag_id: int, owner: str, lease_ms: int) -> bool:
        """Take the tag's lease unless another flush holds it."""
        lease = TagKeys(account, tag_id).key("lease")
        return bool(self.redis.set(lease, owner, nx=True, px=lease_ms))

    def acquire_for_flush(
        self, account: str, tag_id: int, owner: str, lease_ms: int
    ) -> tuple[bool, bool]:
        """``acquire``, and whether the account's batches hold for a backlog ingest is
        merging (``backlogged``), in one round trip: (acquired, backlogged)."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.set(TagKeys(account, tag_id).key("lease"), owner, nx=True, px=lease_ms)
        pipe.exists(_backlog_key(account))
        acquired, backlogged = pipe.execute()
        return bool(acquired), bool(backlogged)

    def renew(self, account: str, tag_id: int, owner: str, lease_ms: int) -> None:
        """Extend the lease before a call; raise ``LeaseLost`` if another flush has it."""
        if not self._run("renew", TagKeys(account, tag_id), [owner, lease_ms]):
            raise LeaseLost

    def scheduled(self, account: str, tag_id: int) -> str | None:
        """Why the tag's next flush is on its way (now, later, backoff, slot), if one is."""
        value = self.redis.get(TagKeys(account, tag_id).key("sched"))
        return None if value is None else text(value)

    def release(
        self,
        account: str,
        tag_id: int,
        owner: str,
        *,
        delay_ms: int | None = None,
        why: Literal["backoff", "slot"] = "backoff",
    ) -> int:
        """Give up the lease; the delay of the next flush to send, or -1 for none.

        ``delay_ms`` overrides the linger (a backoff, a pause, a call slot further ahead).
        """
        args = [
            owner,
            self.linger_ms,
            SCHED_GRACE_MS,
            MAX_BATCH,
            -1 if delay_ms is None else delay_ms,
            why,
        ]
        return int(self._run("release", TagKeys(account, tag_id), args))

    # -- a flush's side: batches -----------------------------------------------------------

    def take(
        self,
        account: str,
        tag_id: int,
        owner: str,
        lease_ms: int,
        *,
        paused_ops: Iterable[str] = (),
        hold_ms: int = 0,
    ) -> Take:
        """The tag's next work: a split to resume or a fresh batch (see ``take.lua``).

        ``hold_ms``: intents still wait in the queue; a batch waits for them until its
        oldest intent has waited this long.
        """
        args = self._take_args(owner, lease_ms, paused_ops, hold_ms)
        return _take(account, tag_id, self._run("take", TagKeys(account, tag_id), args))

    def _take_args(
        self, owner: str, lease_ms: int, paused_ops: Iterable[str], hold_ms: int
    ) -> list[Any]:
        paused = ",".join(sorted(paused_ops))
        return [owner, self.linger_ms, MAX_BATCH, lease_ms, paused, hold_ms, self.ordering_window_s]

    def ack(self, batch: Batch, owner: str, openids: list[str] | None = None) -> Acked:
        """The batch (or ``openids`` of it) was applied: how many were acknowledged, and
        how many openids of the tag wait in pending."""
        answer = self._run("ack", self._keys(batch), self._ack_args(batch, owner, openids),
                           batch=batch.hash_key)  # fmt: skip
        return self._acked(batch, answer, openids)

    def ack_take(
        self,
        batch: Batch,
        owner: str,
        lease_ms: int,
        *,
        paused_ops: Iterable[str] = (),
        hold_ms: int = 0,
    ) -> tuple[Acked, Take]:
        """``ack`` the whole in-flight ``batch``, then ``take`` the tag's next work, in one
        round trip (``ack_take.lua``)."""
        assert batch.plan is None, "a split's openids are acked by ack()"
        args = [
            *self._ack_args(batch, owner, None),
            *self._take_args(owner, lease_ms, paused_ops, hold_ms),
        ]
        answer = self._run("ack_take", self._keys(batch), args, batch=batch.hash_key)
        acked = self._acked(batch, answer[:2], None)
        return acked, _take(batch.account, batch.tag_id, answer[2:])

    def _ack_args(self, batch: Batch, owner: str, openids: list[str] | None) -> list[Any]:
        plan = batch.plan.to_json() if batch.plan is not None else ""
        return [
            owner, plan, batch.op, batch.call_id or "-", self.history_ms,
            *(openids or []),
        ]  # fmt: skip

    @staticmethod
    def _acked(batch: Batch, answer: list[Any], openids: list[str] | None) -> Acked:
        if int(answer[0]) < 0:
            raise LeaseLost
        batch.settled(openids if openids is not None else batch.openids)
        return Acked(int(answer[0]), int(answer[1]))

    def drop(self, batch: Batch, owner: str, openids: list[str]) -> int:
        """Take dead-lettered openids out of the batch for good."""
        plan = batch.plan.to_json() if batch.plan is not None else ""
        dropped = int(
            self._run("drop", self._keys(batch), [owner, plan, *openids], batch=batch.hash_key)
        )
        if dropped < 0:
            raise LeaseLost
        batch.settled(openids)
        return dropped

    def retry(self, batch: Batch, owner: str, *, max_attempts: int) -> Retried:
        """A fresh batch failed: back to pending with an attempt counted.

        Intents that used up their attempts stay in flight until ``drop``.
        """
        answer = self._nack(batch, owner, "count", max_attempts, [])
        exhausted = _exhausted(answer[2:])
        batch.settled(set(batch.openids) - {e.openid for e in exhausted})
        return Retried(int(answer[0]), int(answer[1]), exhausted)

    def hold(self, batch: Batch, owner: str, openids: list[str], *, max_attempts: int) -> Retried:
        """A split's call failed: count an attempt for ``openids``; all stay in the split."""
        answer = self._nack(batch, owner, "hold", max_attempts, openids)
        return Retried(0, int(answer[1]), _exhausted(answer[2:]))

    def putback(self, batch: Batch, owner: str) -> int:
        """A fresh batch never reached WeChat: back to pending unchanged."""
        restored = int(self._nack(batch, owner, "putback", 0, [])[0])
        batch.settled(batch.openids)
        return restored

    def _nack(
        self, batch: Batch, owner: str, mode: str, max_attempts: int, openids: list[str]
    ) -> list[Any]:
        answer = list(
            self._run(
                "nack",
                self._keys(batch),
                [owner, mode, max_attempts, *openids],
                batch=batch.hash_key,
            )
        )
        if int(answer[0]) < 0:
            raise LeaseLost
        return answer

    def suspect(self, batch: Batch, owner: str, plan: SplitPlan) -> None:
        """A fresh batch was refused for a bad openid: keep it as a split with ``plan``."""
        keys = self._keys(batch)
        moved = int(self._run("suspect", keys, [owner, plan.to_json()], batch=keys.split(batch.op)))
        if moved < 0:
            raise LeaseLost
        batch.plan = plan

    def save_plan(self, batch: Batch, owner: str) -> None:
        """Store the split's plan after an answer that settled no openid."""
        plan = batch.plan.to_json() if batch.plan is not None else ""
        if int(self._run("plan", self._keys(batch), [owner, plan], batch=batch.hash_key)) < 0:
            raise LeaseLost

    # -- a gone tag ------------------------------------------------------------------------

    def tag_gone(self, account: str, tag_id: int, owner: str) -> list[tuple[Op, str, float]]:
        """Mark the tag gone; return every pending, in-flight and split (op, openid, ts)."""
        keys = TagKeys(account, tag_id)
        flat = self._run("tag_gone", keys, [owner])
        if flat and text(flat[0]) == "lost":
            raise LeaseLost
        self.redis.sadd(GONE_INDEX, keys.member)
        return [
            (
                "untag" if text(flat[i]) == "untag" else "tag",
                text(flat[i + 1]),
                float(flat[i + 2]),
            )
            for i in range(0, len(flat), 3)
        ]

    def drop_tag(self, account: str, tag_id: int, owner: str) -> None:
        """Forget a gone tag's buffers (after its intents were dead-lettered)."""
        if int(self._run("drop_tag", TagKeys(account, tag_id), [owner])) < 0:
            raise LeaseLost

    def gone_tags(self) -> list[tuple[str, int]]:
        """Every (account, tag) marked gone."""
        return sorted(parse_member(m) for m in self.redis.smembers(GONE_INDEX))

    def clear_gone(self, account: str, tag_id: int) -> None:
        """The tag exists again (``tags/get`` lists it): accept its intents again."""
        keys = TagKeys(account, tag_id)
        self.redis.delete(keys.key("gone"))
        self.redis.srem(GONE_INDEX, keys.member)

    # -- sweep, wake-ups and status --------------------------------------------------------

    def pause_tag(self, account: str, tag_id: int, *, by: str, reason: str) -> None:
        """An operator pauses the tag: its intents are merged and kept, none is sent (the
        flush in flight finishes its call) until ``resume_tag``."""
        key = TagKeys(account, tag_id).key("held")
        self.redis.hset(key, mapping={"by": by, "reason": reason, "at": time.time()})
        self.redis.sadd(TAG_INDEX, TagKeys(account, tag_id).member)

    def resume_tag(self, account: str, tag_id: int) -> tuple[bool, list[tuple[str, int]]]:
        """Lift an operator's pause of the tag: was it paused, and its flush to send now if it
        has work (the caller sends it: ``queues.send_flushes``)."""
        was = bool(self.redis.delete(TagKeys(account, tag_id).key("held")))
        claimed = self._run("sweep", TagKeys(account, tag_id), [SCHED_GRACE_MS])
        return was, [(account, tag_id)] if claimed else []

    def paused_tags(self, account: str | None = None) -> dict[tuple[str, int], dict[str, str]]:
        """The tags operators paused (of ``account``): who, why and since when."""
        tags = [t for t in self.tags() if account is None or t[0] == account]
        pipe = self.redis.pipeline(transaction=False)
        for tag_account, tag_id in tags:
            pipe.hgetall(TagKeys(tag_account, tag_id).key("held"))
        return {
            tag: {text(k): text(v) for k, v in fields.items()}
            for tag, fields in zip(tags, pipe.execute(), strict=True)
            if fields
        }

    def drop_fan(self, account: str, openid: str) -> int:
        """Forget the fan's pending intents in every tag of the account (the fan
        unsubscribed: WeChat drops its tags); return how many. Batches in flight settle as
        WeChat answers them."""
        tags = [tag_id for tag_account, tag_id in self.tags() if tag_account == account]
        pipe = self.redis.pipeline(transaction=False)
        for tag_id in tags:
            keys = TagKeys(account, tag_id)
            pipe.zrem(keys.key("pending:tag"), openid)
            pipe.zrem(keys.key("pending:untag"), openid)
            pipe.hdel(keys.key("attempts"), openid)
            pipe.hdel(keys.key("first_seen"), openid)
        replies = pipe.execute()
        return sum(int(replies[i]) + int(replies[i + 1]) for i in range(0, len(replies), 4))

    def tags(self) -> list[tuple[str, int]]:
        """Every (account, tag) that has had intents."""
        return sorted(parse_member(m) for m in self.redis.smembers(TAG_INDEX))

    def wake(self, account: str) -> list[tuple[str, int]]:
        """Forget the delayed flushes of an account's tags that wait out a backoff or pause,
        and claim a flush now for each of its tags with work and none coming: the caller
        sends them (``queues.send_flushes``). Left to the sweep, they came 1 to 3 s later,
        and every lifted pause showed as lost wake-ups it had to rescue."""
        for tag_account, tag_id in self.tags():
            key = TagKeys(tag_account, tag_id).key("sched")
            if tag_account == account and self.redis.get(key) == b"backoff":
                self.redis.delete(key)
        return self.sweep(accounts={account})

    def waiting(self, account: str, tag_id: int) -> int:
        """How many openids of the tag wait in its pending buffers (both ops)."""
        keys = TagKeys(account, tag_id)
        pipe = self.redis.pipeline(transaction=False)
        pipe.zcard(keys.key("pending:tag"))
        pipe.zcard(keys.key("pending:untag"))
        return int(sum(pipe.execute()))

    def mark_backlog(self, accounts: Iterable[str]) -> None:
        """Say that ingest is merging these accounts' intents from a backlog (for a moment)."""
        pipe = self.redis.pipeline(transaction=False)
        for account in accounts:
            pipe.set(_backlog_key(account), 1, px=BACKLOG_MARK_MS)
        pipe.execute()

    def sweep(self, *, accounts: Collection[str] | None = None) -> list[tuple[str, int]]:
        """Claim a flush for every tag (of ``accounts``) with work but no flush coming."""
        tags = [t for t in self.tags() if accounts is None or t[0] in accounts]
        script = self._scripts["sweep"]
        n_keys = len(SCRIPT_KEYS["sweep"])

        def build(pipe: Any) -> None:
            for account, tag_id in tags:
                keys = TagKeys(account, tag_id).for_script("sweep")
                pipe.evalsha(script.sha, n_keys, *keys, SCHED_GRACE_MS)

        claims = self._execute(build, "sweep")
        return [tag for tag, claimed in zip(tags, claims, strict=True) if claimed]

    def status(self, tags: list[tuple[str, int]] | None = None) -> list[TagStatus]:
        """The backlog of every tag (or of ``tags``), read in one round trip."""
        tags = self.tags() if tags is None else tags
        pipe = self.redis.pipeline(transaction=False)
        for account, tag_id in tags:
            keys = TagKeys(account, tag_id)
            pipe.zcard(keys.key("pending:tag"))
            pipe.zcard(keys.key("pending:untag"))
            pipe.hlen(keys.key("inflight"))
            pipe.hlen(keys.split("tag"))
            pipe.hlen(keys.split("untag"))
            pipe.zrange(keys.key("pending:tag"), 0, 0, withscores=True)
            pipe.zrange(keys.key("pending:untag"), 0, 0, withscores=True)
            pipe.exists(keys.key("lease"))
            pipe.get(keys.key("sched"))
        answers = pipe.execute()
        result = []
        width = 9
        for i, (account, tag_id) in enumerate(tags):
            (
                n_tag,
                n_untag,
                inflight,
                split_tag,
                split_untag,
                first_tag,
                first_untag,
                leased,
                sched,
            ) = answers[i * width : (i + 1) * width]
            oldest = [score for _, score in (*first_tag, *first_untag)]
            result.append(
                TagStatus(
                    account,
                    tag_id,
                    int(n_tag),
                    int(n_untag),
                    max(0, int(inflight) - 1),  # the '~op' field is not an openid
                    # '~op' and '~plan' are not openids
                    max(0, int(split_tag) - 2) + max(0, int(split_untag) - 2),
                    min(oldest) if oldest else None,
                    bool(leased),
                    text(sched) if sched else None,
                )
            )
        return result

    def unsettled(self, account: str, tag_id: int) -> int:
        """Intents of one tag not yet applied or dead-lettered."""
        return self.status([(account, tag_id)])[0].unsettled

    @staticmethod
    def _keys(batch: Batch) -> TagKeys:
        return TagKeys(batch.account, batch.tag_id)
