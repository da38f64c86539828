"""The account gate: every WeChat call of an account passes it, in every process.

On Redis's clock (``TIME`` inside Lua), shared by all workers of all hosts:
- a rate limit, GCRA: ``TAGSYNC_RATE`` calls/s with ``TAGSYNC_BURST``; it answers how long to
  wait, reserving the slot when the wait is short, so nobody spins or burns a retry on it;
- a daily budget, ``TAGSYNC_DAILY_BUDGET`` calls per Asia/Shanghai day;
- pauses: after 45011 to the next minute, after 45009 (or the budget) to 00:00 Shanghai,
  after a credential error for a while, with the reason kept for ``tagsync status``.

Keys: ``tagsync:{account}:rate``, ``:pause`` and ``:budget``, in the account's slot.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Literal

from redis import Redis

from worker.lua import load_script

#: The share of TAGSYNC_RATE the gate admits. A call reaches WeChat some milliseconds
#: after its slot (thread wake-up, GIL, network), and not always the same number: slots
#: spaced 1/(0.97 * rate) apart tolerate 1/0.97 - 1 = 31 ms of such jitter before one
#: calendar second on WeChat's side could see more calls than the rate.
RATE_SAFETY = 0.97
#: The longest wait for a slot that a flush sleeps through; a longer one reschedules it.
MAX_SLEEP_MS = 250
#: How long a credential error pauses the account before a call tries again.
CREDENTIAL_PAUSE_MS = 5 * 60 * 1000


@dataclass(frozen=True)
class Admission:
    """The gate's answer: go (after ``wait_ms``), wait (``wait_ms``), or paused."""

    kind: Literal["go", "wait", "paused"]
    wait_ms: int
    reason: str = ""


@dataclass(frozen=True)
class Pause:
    """Why and until when an account's calls are paused."""

    reason: str
    errcode: str
    until: float
    message: str


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class AccountGate:
    """Rate, budget and pauses of WeChat accounts."""

    def __init__(
        self, redis: Redis, *, rate: float, burst: int = 1, daily_budget: int | None = None
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.redis = redis
        self.rate = rate
        self.burst = burst
        self.daily_budget = daily_budget or 0
        self.interval_ms = 1000.0 / (rate * RATE_SAFETY)
        self._admit = load_script(redis, "worker.gate", "admit.lua")
        self._pause = load_script(redis, "worker.gate", "pause.lua")

    @staticmethod
    def _keys(account: str) -> tuple[str, str, str]:
        base = f"tagsync:{{{account}}}"
        return f"{base}:rate", f"{base}:pause", f"{base}:budget"

    def admit(self, account: str, *, max_sleep_ms: int = MAX_SLEEP_MS) -> Admission:
        """Ask for a call slot; a granted slot is reserved ``wait_ms`` from now."""
        answer = self._admit(
            keys=list(self._keys(account)),
            args=[f"{self.interval_ms:.3f}", self.burst, max_sleep_ms, self.daily_budget],
        )
        kind = _text(answer[0])
        reason = _text(answer[2]) if len(answer) > 2 else ""
        return Admission(kind, int(answer[1]), reason)  # type: ignore[arg-type]

    def pause(
        self,
        account: str,
        *,
        reason: str,
        errcode: int | None,
        how: str,
        ms: int = 0,
        message: str = "",
    ) -> float:
        """Pause the account ('minute', 'day' or 'for' ``ms``); return the end in epoch seconds."""
        ends = self._pause(
            keys=[self._keys(account)[1]],
            args=[reason, "" if errcode is None else errcode, how, ms, message[:300]],
        )
        return int(ends) / 1000

    def paused(self, account: str) -> Pause | None:
        """The account's pause, if any."""
        fields = self.redis.hgetall(self._keys(account)[1])
        if not fields:
            return None
        values = {_text(k): _text(v) for k, v in fields.items()}
        until = float(values.get("until", 0)) / 1000
        if until <= time.time():
            return None
        return Pause(
            values.get("reason", ""), values.get("errcode", ""), until, values.get("message", "")
        )

    def resume(self, account: str) -> bool:
        """Lift the account's pause and reset today's budget count; True if it was paused."""
        _, pause, budget = self._keys(account)
        lifted = bool(self.redis.delete(pause))
        self.redis.hset(budget, "used", 0)
        return lifted

    def budget_used(self, account: str) -> int:
        """Calls counted against today's budget."""
        return int(self.redis.hget(self._keys(account)[2], "used") or 0)
