"""Why is this fan (not) in this tag: ``tagsync explain``.

Read from what Redis holds for each tag of the account: the fan's last accepted intent and
the call that applied it (the per-tag history, ``TAGSYNC_HISTORY_HOURS``), its pending,
in-flight or split intent, an operator's hold, a tag WeChat said is gone, and the fan's
dead letters. Nothing is asked of WeChat.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import redis

from worker.base.lua import text
from worker.dead_letters import DeadLetters
from worker.pending import PendingStore
from worker.pending.keys import TagKeys

#: The newest dead letters searched for the fan (the stream holds up to TAGSYNC_DLQ_MAX_LEN).
DEAD_LETTERS_SEARCHED = 20_000


@dataclass(frozen=True)
class Intent:
    """One intent of the fan's history: op, event time, how it came, when accepted."""

    op: str
    ts: float
    source: str
    accepted_at: float


@dataclass(frozen=True)
class Applied:
    """The call that applied the fan's intent: op, event time, when, the call's id."""

    op: str
    ts: float
    at: float
    call: str


@dataclass(frozen=True)
class Explanation:
    """Where the fan's intents for one tag stand, and the one-line verdict."""

    tag_id: int
    state: str
    verdict: str
    last: Intent | None
    applied: Applied | None
    pending: dict[str, float]
    in_flight: dict[str, Any] | None
    dead_letter: dict[str, Any] | None
    held: dict[str, str] | None
    gone: bool

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def explain(
    connection: redis.Redis, account: str, openid: str, tag_id: int | None = None
) -> list[Explanation]:
    """The fan's story in ``tag_id`` (or in every tag of the account that had intents)."""
    store = PendingStore(connection)
    tags = [tag_id] if tag_id is not None else [t for a, t in store.tags() if a == account]
    letters = _dead_letters(connection, account, openid)
    pipe = connection.pipeline(transaction=False)
    for tag in tags:
        keys = TagKeys(account, tag)
        pipe.hmget(keys.key("history"), [openid, f"{openid} ok"])
        pipe.zscore(keys.key("pending:tag"), openid)
        pipe.zscore(keys.key("pending:untag"), openid)
        pipe.hmget(keys.key("inflight"), [openid, "~op"])
        pipe.hget(keys.split("tag"), openid)
        pipe.hget(keys.split("untag"), openid)
        pipe.hget(keys.key("attempts"), openid)
        pipe.hgetall(keys.key("held"))
        pipe.exists(keys.key("gone"))
    answers = pipe.execute()
    found = []
    for index, tag in enumerate(tags):
        history, p_tag, p_untag, inflight, s_tag, s_untag, attempts, held, gone = answers[
            index * 9 : index * 9 + 9
        ]
        pending = {op: float(ts) for op, ts in (("tag", p_tag), ("untag", p_untag)) if ts}
        moving = None
        if inflight[0] is not None:
            moving = {"op": text(inflight[1] or b"?"), "ts": float(inflight[0]), "split": False}
        for op, ts in (("tag", s_tag), ("untag", s_untag)):
            if ts is not None:
                moving = {"op": op, "ts": float(ts), "split": True}
        if moving is not None:
            moving["attempts"] = int(attempts or 0)
        found.append(
            _verdict(
                tag,
                _intent(history[0]),
                _applied(history[1]),
                pending,
                moving,
                letters.get(tag),
                {text(k): text(v) for k, v in held.items()} or None,
                bool(gone),
            )
        )
    return found


def _verdict(
    tag: int,
    last: Intent | None,
    applied: Applied | None,
    pending: dict[str, float],
    moving: dict[str, Any] | None,
    letter: dict[str, Any] | None,
    held: dict[str, str] | None,
    gone: bool,
) -> Explanation:
    # The newest of what is known decides; a dead letter older than the last accepted
    # intent is history, not the verdict.
    last_ts = last.ts if last is not None else 0.0
    if gone:
        state, verdict = "gone", "WeChat said the tag does not exist: intents are dead-lettered"
    elif pending and held:
        op = max(pending, key=lambda o: pending[o])
        state, verdict = "held", f"{op} pending, held by {held.get('by', '?')}: {held['reason']}"
    elif moving is not None:
        how = "being split (a batch WeChat refused)" if moving["split"] else "in a call now"
        state = "in_flight"
        verdict = f"{moving['op']} {how}, attempt {moving['attempts'] + 1}"
    elif pending:
        op = max(pending, key=lambda o: pending[o])
        state, verdict = "pending", f"{op} pending (event time {_clock(pending[op])})"
    elif letter is not None and letter["ts"] >= last_ts:
        state = "dead_lettered"
        verdict = (
            f"{letter['op']} dead-lettered: {letter['reason']}"
            + (f" (errcode {letter['errcode']})" if letter.get("errcode") else "")
            + f" at {_clock(letter['dead_lettered_at'])}"
        )
    elif applied is not None and applied.ts >= last_ts:
        state = "applied"
        verdict = f"{applied.op} applied at {_clock(applied.at)} by call {applied.call}"
        verdict += " (the fan is in the tag)" if applied.op == "tag" else " (not in the tag)"
    elif last is not None:
        state = "unknown"
        verdict = f"{last.op} accepted at {_clock(last.accepted_at)}; its call is not recorded"
    else:
        state = "none"
        verdict = "no intent of this fan for this tag is known (history kept: see --help)"
    return Explanation(tag, state, verdict, last, applied, pending, moving, letter, held, gone)


def _intent(raw: bytes | None) -> Intent | None:
    parts = text(raw).split(" ") if raw else []
    if len(parts) != 4:
        return None
    op, ts, source, accepted_ms = parts
    return Intent(op, float(ts), source, int(accepted_ms) / 1000)


def _applied(raw: bytes | None) -> Applied | None:
    parts = text(raw).split(" ") if raw else []
    if len(parts) != 4:
        return None
    op, ts, at_ms, call = parts
    return Applied(op, float(ts), int(at_ms) / 1000, call)


def _dead_letters(connection: redis.Redis, account: str, openid: str) -> dict[int, dict[str, Any]]:
    """The fan's newest dead letter per tag, among the newest ``DEAD_LETTERS_SEARCHED``."""
    newest: dict[int, dict[str, Any]] = {}
    for _, letter in DeadLetters(connection).scan_newest(DEAD_LETTERS_SEARCHED):
        mine = letter.account == account and letter.openid == openid
        if mine and letter.tag_id not in newest:
            newest[letter.tag_id] = asdict(letter)
    return newest


def _clock(epoch_s: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch_s))
