"""The dead-letter store: intents that can never be applied, kept for a human to look at.

A bounded Redis stream (``tagsync:dead_letters``, trimmed to about ``max_len`` entries).
An entry holds what is needed to understand and replay the intent, never a secret. Each
intent (account, tag, op, openid, event ts) is written once: ``dead_letter.lua`` remembers
the intents it wrote for a day, so a flush that repeats a dead letter after a crash or a
lost lease writes nothing.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

from redis import Redis

from worker.base.lua import load_script, text
from worker.observability.metrics import INTENTS_DEAD_LETTERED
from worker.observability.redaction import redact

#: The stream of dead letters.
STREAM = "tagsync:dead_letters"
#: The intents written lately (a zset in the stream's Redis Cluster slot).
SEEN = "{tagsync:dead_letters}:seen"
#: About how many dead letters are kept (older ones are trimmed).
DEFAULT_MAX_LEN = 100_000
#: How long an intent is remembered as written: far longer than a lease or a restart.
SEEN_MS = 86_400_000


#: Reasons of dead letters whose account is not one this deployment serves.
UNSERVED_REASONS = frozenset({"invalid_intent", "unknown_account"})


@dataclass(frozen=True)
class DeadLetter:
    """One intent given up on, and why."""

    account: str
    tag_id: int
    op: str
    openid: str
    ts: float
    reason: str
    errcode: int | None = None
    errmsg: str = ""
    attempts: int = 0
    first_seen: float | None = None
    dead_lettered_at: float = 0.0
    #: The tag's name, for an intent that named its tag (``tag_id`` is then -1 if the
    #: name never resolved: unknown_tag, tag_limit).
    tag_name: str = ""

    def fields(self) -> dict[str, str]:
        """The stream entry's fields (empty values omitted)."""
        return {k: str(v) for k, v in asdict(self).items() if v not in (None, "")}

    @classmethod
    def for_row(cls, row: Any, errmsg: str) -> DeadLetter:
        """A dead letter for a queue row that is not an intent, keeping what can be read."""
        values = list(row) if isinstance(row, list | tuple) else []
        values += [None] * (5 - len(values))
        op, tag_id, openid, ts, account = values[:5]
        whole = isinstance(tag_id, int) and not isinstance(tag_id, bool) and abs(tag_id) < 2**63
        number = isinstance(ts, int | float) and not isinstance(ts, bool)
        seconds = float(ts) if number and abs(ts) < 1e18 and math.isfinite(ts) else 0.0
        return cls(
            account=_short(account, 64),
            tag_id=tag_id if whole else -1,
            op=_short(op, 16),
            openid=_short(openid, 64),
            ts=seconds,
            reason="invalid_intent",
            errmsg=errmsg,
            tag_name=_short(tag_id, 64) if isinstance(tag_id, str) else "",
        )

    @classmethod
    def tag_gone(
        cls,
        account: str,
        tag_id: int,
        op: str,
        openid: str,
        ts: float,
        *,
        errcode: int | None = 45159,
        errmsg: str = "the tag does not exist",
    ) -> DeadLetter:
        """An intent of a tag WeChat does not list (45159 confirmed by ``tags/get``)."""
        return cls(
            account,
            tag_id,
            op,
            openid,
            ts,
            reason="tag_gone",
            errcode=errcode,
            errmsg=errmsg,
            first_seen=time.time(),
        )

    @property
    def intent_id(self) -> str:
        """What makes the intent itself unique: written once per id. A row that is not an
        intent is told apart by what is wrong with it (its fields may be unreadable)."""
        tag = f"{self.tag_id}:{self.tag_name}" if self.tag_name else str(self.tag_id)
        intent = f"{self.account}|{tag}|{self.op}|{self.openid}|{self.ts!r}"
        return f"{intent}|{self.errmsg}" if self.reason == "invalid_intent" else intent


class DeadLetters:
    """Append to and read the dead-letter stream."""

    def __init__(self, redis: Redis, *, max_len: int = DEFAULT_MAX_LEN) -> None:
        self.redis = redis
        self.max_len = max_len
        self._write = load_script(redis, "worker", "dead_letter.lua")

    def add(self, letters: Iterable[DeadLetter]) -> int:
        """Append dead letters (errmsg redacted), each intent once; return how many were new."""
        now = time.time()
        batch = list(letters)
        written = 0
        for start in range(0, len(batch), 500):
            chunk = batch[start : start + 500]
            args: list[Any] = [self.max_len, SEEN_MS, max(self.max_len, 10_000)]
            for letter in chunk:
                fields = letter.fields()
                fields["errmsg"] = redact(letter.errmsg)[:500]
                fields["dead_lettered_at"] = str(letter.dead_lettered_at or now)
                args += [letter.intent_id, len(fields)]
                for name, value in fields.items():
                    args += [name, value]
            answers = self._write(keys=[STREAM, SEEN], args=args)
            for letter, new in zip(chunk, answers, strict=True):
                if new:
                    written += 1
                    errcode = "" if letter.errcode is None else str(letter.errcode)
                    # A row's account is whatever a producer wrote: never a label value
                    # unless it named a served account (bounded series).
                    account = "" if letter.reason in UNSERVED_REASONS else letter.account
                    INTENTS_DEAD_LETTERED.labels(account, letter.op, letter.reason, errcode).inc()
        return written

    def count(self) -> int:
        """How many dead letters are kept."""
        return int(self.redis.xlen(STREAM))

    def scan(
        self,
        *,
        errcode: int | None = None,
        tag_id: int | None = None,
        account: str | None = None,
        reason: str | None = None,
        page: int = 1000,
    ) -> Iterator[tuple[str, DeadLetter]]:
        """Every kept dead letter (oldest first) matching the filters, with its stream id."""
        start = "-"
        while True:
            entries: list[Any] = self.redis.xrange(STREAM, min=start, max="+", count=page) or []
            for entry_id, raw in entries:
                letter = _parse({text(k): text(v) for k, v in (raw or {}).items()})
                if errcode is not None and letter.errcode != errcode:
                    continue
                if tag_id is not None and letter.tag_id != tag_id:
                    continue
                if account is not None and letter.account != account:
                    continue
                if reason is not None and letter.reason != reason:
                    continue
                yield text(entry_id), letter
            if len(entries) < page:
                return
            start = "(" + text(entries[-1][0])

    def scan_newest(self, limit: int, *, page: int = 1000) -> Iterator[tuple[str, DeadLetter]]:
        """The newest ``limit`` dead letters, newest first, with their stream ids."""
        end, left = "+", limit
        while left > 0:
            count = min(page, left)
            entries: list[Any] = self.redis.xrevrange(STREAM, max=end, min="-", count=count) or []
            for entry_id, raw in entries:
                yield text(entry_id), _parse({text(k): text(v) for k, v in (raw or {}).items()})
            if len(entries) < count:
                return
            left -= len(entries)
            end = "(" + text(entries[-1][0])

    def delete(self, entry_ids: list[str]) -> int:
        """Remove dead letters by stream id; return how many were removed."""
        removed = 0
        for start in range(0, len(entry_ids), 1000):
            removed += int(self.redis.xdel(STREAM, *entry_ids[start : start + 1000]))
        return removed


def _short(value: Any, limit: int) -> str:
    """``str(value)`` cut to ``limit``, for any value (an int of 5,000 digits, deep nesting)."""
    try:
        return str(value)[:limit]
    except (ValueError, RecursionError):
        return f"<{type(value).__name__}>"


def _parse(fields: dict[str, str]) -> DeadLetter:
    def number(name: str) -> float | None:
        try:
            return float(fields[name])
        except (KeyError, ValueError):
            return None

    errcode = number("errcode")
    return DeadLetter(
        account=fields.get("account", ""),
        tag_id=int(number("tag_id") or 0),
        op=fields.get("op", ""),
        openid=fields.get("openid", ""),
        ts=number("ts") or 0.0,
        reason=fields.get("reason", ""),
        errcode=None if errcode is None else int(errcode),
        errmsg=fields.get("errmsg", ""),
        attempts=int(number("attempts") or 0),
        first_seen=number("first_seen"),
        dead_lettered_at=number("dead_lettered_at") or 0.0,
        tag_name=fields.get("tag_name", ""),
    )
