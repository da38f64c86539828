"""An operator's controls, taken by every worker without a restart (``tagsync pause``,
``resume`` and ``limits``, and the same over the ingest's HTTP API).

- Pause an account (its calls stop; reason ``operator``, until resumed) or one of its tags
  (its intents merge and wait; no flush is sent). Intents keep being accepted and kept.
- Resume: the pause is lifted and the waiting tags get their flushes at once.
- Limits: an account's rate, burst and daily budget, kept in Redis over the accounts
  file's (which stays the default). The gate's script reads them at every call slot, so a
  limit set holds from the next call in every process; each process also rebuilds its
  accounts within ``RELOAD_INTERVAL_S`` (and so takes a clear). Values are clamped to
  ``BOUNDS``.
"""

from __future__ import annotations

import getpass
import math
import socket
import time
from dataclasses import dataclass

from redis import Redis
from redis.typing import EncodableT, FieldT

from worker.base.lua import text
from worker.gate import AccountGate
from worker.pending import PendingStore
from worker.queues import send_flushes

#: An operator's pause lasts until resumed; Redis needs an end: ten years.
OPERATOR_PAUSE_MS = 10 * 365 * 86_400_000
#: The pause reason of an operator's pause.
OPERATOR = "operator"
#: Bumped at every change of limits: a worker rereads them only when it moved.
LIMITS_VERSION = "tagsync:limits:version"
#: Sane bounds of each limit: (lowest, highest).
BOUNDS: dict[str, tuple[float, float]] = {
    "rate": (0.01, 1000.0),
    "burst": (1, 1000),
    "daily_budget": (0, 100_000_000),
}


def operator() -> str:
    """Who runs this command: user@host (it goes with a pause, into ``status``)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def limits_key(account: str) -> str:
    """The Redis hash of an account's limits set at run time (the gate's script reads it)."""
    return AccountGate.key(account, "limits")


def pause(redis: Redis, account: str, *, tag: int | None, reason: str, by: str) -> None:
    """Pause ``account`` (or only its ``tag``) until resumed."""
    reason = (reason or "paused by an operator")[:200]
    if tag is not None:
        PendingStore(redis).pause_tag(account, tag, by=by, reason=reason)
        return
    AccountGate(redis, rate=1).pause(
        account,
        reason=OPERATOR,
        errcode=None,
        until="for",
        ms=OPERATOR_PAUSE_MS,
        message=f"{reason} (by {by})",
    )


def resume(redis: Redis, account: str, *, tag: int | None, queue: Redis | None = None) -> bool:
    """Lift an operator's pause of ``account`` (or of its ``tag``) and send the waiting
    tags their flushes; True if it was paused."""
    store = PendingStore(redis)
    if tag is not None:
        was, flushes = store.resume_tag(account, tag)
        send_flushes(queue or redis, flushes)
        return was
    lifted = AccountGate(redis, rate=1).lift(account, OPERATOR)
    send_flushes(queue or redis, store.wake(account))
    return lifted


@dataclass(frozen=True)
class LimitsSet:
    """An account's limits as set at run time, and who set them when."""

    rate: float | None = None
    burst: int | None = None
    daily_budget: int | None = None
    by: str = ""
    at: float = 0.0


def clamp(name: str, value: float) -> float:
    """``value`` within ``BOUNDS[name]``; ``ValueError`` for a value that is not a number."""
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number")
    low, high = BOUNDS[name]
    return min(max(value, low), high)


def set_limits(
    redis: Redis,
    account: str,
    *,
    rate: float | None = None,
    burst: int | None = None,
    daily_budget: int | None = None,
    by: str,
) -> LimitsSet:
    """Set (some of) an account's limits over the file's; return what is now set."""
    fields: dict[FieldT, EncodableT] = {"by": by, "at": str(time.time())}
    if rate is not None:
        fields["rate"] = f"{clamp('rate', rate):g}"
    if burst is not None:
        fields["burst"] = str(int(clamp("burst", burst)))
    if daily_budget is not None:
        fields["daily_budget"] = str(int(clamp("daily_budget", daily_budget)))
    if len(fields) == 2:
        raise ValueError("give --rate, --burst or --daily-budget")
    # The limits, then the counter every worker watches (two cluster slots: no transaction).
    redis.hset(limits_key(account), mapping=fields)
    redis.incr(LIMITS_VERSION)
    found = limits_set(redis, account)
    assert found is not None
    return found


def clear_limits(redis: Redis, account: str) -> bool:
    """Forget the limits set at run time: the accounts file's apply again."""
    cleared = redis.delete(limits_key(account))
    redis.incr(LIMITS_VERSION)
    return bool(cleared)


def limits_set(redis: Redis, account: str) -> LimitsSet | None:
    """The limits set at run time for ``account``, if any."""
    fields = {text(k): text(v) for k, v in redis.hgetall(limits_key(account)).items()}
    if not fields:
        return None
    return LimitsSet(
        rate=float(fields["rate"]) if "rate" in fields else None,
        burst=int(fields["burst"]) if "burst" in fields else None,
        daily_budget=int(fields["daily_budget"]) if "daily_budget" in fields else None,
        by=fields.get("by", ""),
        at=float(fields.get("at", 0)),
    )


def rates_set(redis: Redis, accounts: list[str]) -> dict[str, float]:
    """The rates set at run time of ``accounts`` (those with one), in one round trip."""
    pipe = redis.pipeline(transaction=False)
    for account in accounts:
        pipe.hget(limits_key(account), "rate")
    return {
        account: float(rate)
        for account, rate in zip(accounts, pipe.execute(), strict=True)
        if rate is not None
    }


def limits_version(redis: Redis) -> int:
    """The limits' change counter (0 before any change)."""
    return int(redis.get(LIMITS_VERSION) or 0)
