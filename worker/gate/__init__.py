"""The account gate: every WeChat call of an account passes it, in every process.

On Redis's clock (``TIME`` inside Lua), shared by all workers of all hosts:
- a rate limit, GCRA: ``TAGSYNC_RATE`` calls/s with ``TAGSYNC_BURST``. It reserves a call
  slot for each caller in the order they ask and answers how long to wait for it, so
  nobody spins or burns a retry, and tags waiting for slots take turns: a caller whose
  slot lies further ahead than it may sleep keeps it and comes back for it;
- a count of the calls of each Asia/Shanghai day, kept for every account (``tagsync
  status`` shows it and the rate in use from it), and a daily budget against it,
  ``TAGSYNC_DAILY_BUDGET``;
- pauses, of the whole account (45011 to the next minute, credential errors for a while,
  the budget to 00:00 Shanghai) or of one API (45009 to 00:00 Shanghai: WeChat counts
  daily quotas per API), with the reason kept for ``tagsync status``.

Keys: ``tagsync:{account}:rate``, ``:pause``, ``:pause:api:<path>`` and ``:budget``, in
the account's slot.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

from redis import Redis

from worker.base.lua import load_script, run_script, script_text, text
from worker.wechat.errors import WeChatError

#: The share of TAGSYNC_RATE the gate admits. A call reaches WeChat some milliseconds
#: after its slot (thread wake-up, GIL, network), and not always the same number: slots
#: spaced 1/(0.98 * rate) apart tolerate 1/0.98 - 1 = 20 ms of such jitter before one
#: calendar second on WeChat's side could see more calls than the rate. (Calls now go at
#: their reserved slot after a short sleep; 0.97 was needed when flushes raced for slots.)
RATE_SAFETY = 0.98
#: The longest wait for a slot that a flush sleeps through; a longer one reschedules it,
#: to come back this long before its slot (dramatiq delivers a delayed message within
#: about 200 ms: two polls of 100 ms).
MAX_SLEEP_MS = 250
#: How late a caller may still use its reserved slot (a later one takes a new slot: using
#: an old one late would bunch calls).
SLOT_TOLERANCE_MS = 10
#: Below this many calls/s, a late call is accounted for (``late``, and a late reserved
#: slot reused by ``admit``): with r calls a second allowed, one late call makes r + 1 in
#: a second if the r after it are on time, likely for r = 2, rare for r = 50, where moving
#: the free slots back at every late call cost a tenth of the rate (0.98 -> 0.89).
LATE_ACCOUNTING_RATE = 4.0
#: Below ``LATE_ACCOUNTING_RATE``, the slack each second keeps free of calls, ms, and how
#: far past one second a late call's later calls keep. RATE_SAFETY's 2% is 20 ms at
#: 2 calls/s, and a call reaches WeChat after its slot by more than that now and then on a
#: busy host (bench accounts, 200 accounts on 2 cores: 19 ms at p90, 42 ms pushed one
#: call into the next second, which then held 3 calls: 45011 and a pause to the next
#: minute). 50 ms costs 2.9% of the rate at 2 calls/s; one such pause costs far more.
LOW_RATE_SLACK_MS = 50
#: How long a credential error pauses the account before a call tries again.
CREDENTIAL_PAUSE_MS = 5 * 60 * 1000
#: How long a revoked authorization (61023, 61003) pauses the account: a new
#: authorization lifts it at once; until then the intents wait (or are purged).
AUTHORIZATION_PAUSE_MS = 24 * 3600 * 1000
#: The WeChat APIs of the worker's batch calls, per op.
BATCH_API = {"tag": "tags/members/batchtagging", "untag": "tags/members/batchuntagging"}

PauseUntil = Literal["minute", "day", "for"]


def emission_interval_ms(rate: float) -> float:
    """The spacing of an account's call slots at ``rate`` calls/s (admit.lua's too)."""
    interval = 1000.0 / (rate * RATE_SAFETY)
    if rate < LATE_ACCOUNTING_RATE:
        interval = max(interval, (1000.0 + LOW_RATE_SLACK_MS) / rate)
    return interval


@dataclass(frozen=True)
class Admission:
    """The gate's answer: go (after ``wait_ms``), wait for a reserved slot, or paused."""

    kind: Literal["go", "wait", "paused"]
    wait_ms: int
    #: The reserved slot (ms on Redis's clock); pass it back to ``admit`` after a wait.
    slot_at: int | None = None
    reason: str = ""
    #: For a pause: 'account' or 'api'.
    scope: str = ""
    #: How late the caller came back for the slot it passed in, ms (0: in time or none).
    late_ms: int = 0
    #: A late reserved slot that goes anyway: the gate moved the later free slots back.
    moved: bool = False


@dataclass(frozen=True)
class Pause:
    """Why and until when an account's (or one API's) calls are paused."""

    reason: str
    errcode: str
    until: float
    message: str


@lru_cache(maxsize=4096)
def _admit_keys(account: str, api: str) -> tuple[bytes, ...]:
    """admit.lua's keys for one (account, API), encoded once."""
    names = ("rate", "pause", "budget", f"pause:api:{api}", "limits")
    return tuple(AccountGate.key(account, name).encode() for name in names)


def _pause_of(fields: dict[Any, Any]) -> Pause | None:
    """The pause a pause hash holds, unless it is absent or over."""
    if not fields:
        return None
    values = {text(k): text(v) for k, v in fields.items()}
    until = float(values.get("until", 0)) / 1000
    if until <= time.time():
        return None
    return Pause(
        values.get("reason", ""), values.get("errcode", ""), until, values.get("message", "")
    )


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
        self.interval_ms = emission_interval_ms(rate)
        #: Calls one second allows, when late calls are accounted for (0: they are not).
        self.late_per_second = max(1, int(rate)) if rate < LATE_ACCOUNTING_RATE else 0
        lib = script_text("worker.gate", "lib.lua")
        self._admit = redis.register_script(lib + script_text("worker.gate", "admit.lua"))
        self._pause = load_script(redis, "worker.gate", "pause.lua")
        self._late = redis.register_script(lib + script_text("worker.gate", "late.lua"))
        # admit.lua's arguments that never change for this gate, encoded once.
        self._interval_arg = f"{self.interval_ms:.3f}".encode()
        self._admit_fixed = tuple(
            str(value).encode()
            for value in (
                SLOT_TOLERANCE_MS,
                self.late_per_second,
                f"{self.rate:g}",
                RATE_SAFETY,
                LATE_ACCOUNTING_RATE,
                LOW_RATE_SLACK_MS,
            )
        )

    @staticmethod
    def key(account: str, name: str) -> str:
        """The gate's key ``name`` of ``account`` (rate, pause, budget, pause:api:<path>)."""
        return f"tagsync:{{{account}}}:{name}"

    def admit(
        self,
        account: str,
        *,
        api: str,
        slot_at: int | None = None,
        max_sleep_ms: int = MAX_SLEEP_MS,
    ) -> Admission:
        """Ask for a call slot of ``api`` (or come back for ``slot_at``, reserved earlier)."""
        answer = run_script(
            self.redis,
            self._admit,
            _admit_keys(account, api),
            [
                self._interval_arg,
                self.burst,
                max_sleep_ms,
                self.daily_budget,
                "" if slot_at is None else slot_at,
                *self._admit_fixed,
            ],
        )
        kind = text(answer[0])
        if kind == "paused":
            return Admission(
                "paused", int(answer[1]), reason=text(answer[2]), scope=text(answer[3])
            )
        late = 0
        if slot_at is not None and len(answer) > 3:
            late = max(0, int(answer[3]) - slot_at)
        if len(answer) > 4:
            # A late reserved slot reused; the gate already moved the free slots back.
            return Admission("go", 0, slot_at=int(answer[2]), late_ms=late, moved=True)
        return Admission(kind, int(answer[1]), slot_at=int(answer[2]), late_ms=late)  # type: ignore[arg-type]

    def late(self, account: str, late_ms: float) -> bool:
        """A call is ``late_ms`` after its slot: True if it may still go (the account's free
        slots then move back as far as needed), False if too many reserved slots follow it.
        Always True at or above ``LATE_ACCOUNTING_RATE``."""
        per_second = self.late_per_second
        if not per_second:
            return True
        answer = self._late(
            keys=[self.key(account, "rate")],
            args=[f"{self.interval_ms:.3f}", f"{late_ms:.1f}", per_second, LOW_RATE_SLACK_MS],
        )
        return bool(int(answer))

    def pause(
        self,
        account: str,
        *,
        api: str | None = None,
        reason: str,
        errcode: int | None,
        until: PauseUntil,
        ms: int = 0,
        message: str = "",
    ) -> float:
        """Pause the account (or one ``api``) to the next 'minute', Shanghai's next 'day', or
        'for' ``ms``; return the end in epoch seconds."""
        name = "pause" if api is None else f"pause:api:{api}"
        ends = self._pause(
            keys=[self.key(account, name)],
            args=[reason, "" if errcode is None else errcode, until, ms, message[:300]],
        )
        return int(ends) / 1000

    def paused(self, account: str) -> Pause | None:
        """The account-wide pause, if any."""
        return self._read_pause(self.key(account, "pause"))

    def pauses(
        self, account: str, apis: tuple[str, ...] = tuple(BATCH_API.values())
    ) -> dict[str, Pause]:
        """Every pause in force: 'account' and each paused API path (one round trip)."""
        scopes = ["account", *apis]
        pipe = self.redis.pipeline(transaction=False)
        for scope in scopes:
            pipe.hgetall(self.key(account, "pause" if scope == "account" else f"pause:api:{scope}"))
        found: dict[str, Pause] = {}
        for scope, fields in zip(scopes, pipe.execute(), strict=True):
            pause = _pause_of(fields)
            if pause is not None:
                found[scope] = pause
        return found

    def paused_ops(self, account: str) -> tuple[set[str], int]:
        """The ops whose API is paused (both when the account is), and the shortest wait, ms."""
        pauses = self.pauses(account)
        if "account" in pauses:
            ops = set(BATCH_API)
        else:
            ops = {op for op, api in BATCH_API.items() if api in pauses}
        ends = [p.until for p in pauses.values()]
        wait_ms = max(0, int((min(ends) - time.time()) * 1000)) if ends else 0
        return ops, wait_ms

    def _read_pause(self, key: str) -> Pause | None:
        return _pause_of(self.redis.hgetall(key))

    def resume(self, account: str, apis: tuple[str, ...] = tuple(BATCH_API.values())) -> bool:
        """Lift the account's pauses (its own and its APIs') and reset today's budget count;
        True if anything was paused."""
        keys = [self.key(account, "pause")] + [self.key(account, f"pause:api:{a}") for a in apis]
        lifted = bool(self.redis.delete(*keys))
        self.redis.hset(self.key(account, "budget"), "used", 0)
        return lifted

    def lift(self, account: str, reason: str) -> bool:
        """Lift the account-wide pause if it is for ``reason``; True if it was."""
        key = self.key(account, "pause")
        if text(self.redis.hget(key, "reason") or b"") != reason:
            return False
        return bool(self.redis.delete(key))

    def budget_used(self, account: str) -> int:
        """Calls counted today (Asia/Shanghai, on Redis's clock), budget or not: the count
        of an account idle since an earlier day is that day's, so it reads 0."""
        seconds, _ = self.redis.time()  # alone: a cluster's pipeline refuses TIME
        day, used = self.redis.hmget(self.key(account, "budget"), "day", "used")
        today = (seconds + 8 * 3600) // 86400  # admit.lua's day: Shanghai is UTC+8 all year
        return int(used or 0) if day is not None and int(day) == today else 0

    def limits_in_use(self, account: str) -> tuple[float, int, int | None] | None:
        """The rate, burst and daily budget the workers gave with their last call of
        ``account`` (None before any): what is in force, whatever the caller's settings."""
        rate, burst, budget = self.redis.hmget(
            self.key(account, "budget"), "rate", "burst", "budget"
        )
        if rate is None:
            return None
        return float(rate), int(burst or 1), int(budget or 0) or None

    def reserved_ahead_ms(self, account: str) -> int:
        """How far ahead call slots are already reserved (near 0 when idle)."""
        seconds, micros = self.redis.time()
        tat = float(self.redis.get(self.key(account, "rate")) or 0)
        return max(0, round(tat - (seconds * 1000 + micros / 1000)))


def pause_for(
    gate: AccountGate, account: str, exc: WeChatError, *, api: str
) -> tuple[float, str, str | None]:
    """Pause what ``exc``'s errcode row says (the account, or only ``api``), for as long
    as it says; return (end in epoch seconds, reason, the paused API or None)."""
    row = exc.row
    paused_api = api if row.pause_scope == "api" else None
    length = row.pause_length
    until: PauseUntil = length if length in ("minute", "day") else "for"
    if length == "authorization":
        # Revoked: only a new authorization helps (``accounts authorize`` lifts it).
        reason, ms = "authorization", AUTHORIZATION_PAUSE_MS
    else:
        reason = "credentials" if row.error_class.value == "credential" else "quota"
        ms = CREDENTIAL_PAUSE_MS
    ends = gate.pause(
        account,
        api=paused_api,
        reason=reason,
        errcode=exc.errcode,
        until=until,
        ms=ms,
        message=str(exc),
    )
    return ends, reason, paused_api
