"""The account gate in a real Redis: GCRA spacing, budget, pauses."""

from __future__ import annotations

import time

import pytest
import redis

from worker.gate import RATE_SAFETY, AccountGate


def test_gcra_spaces_calls_and_reserves_short_waits(redis_client: redis.Redis) -> None:
    """Back-to-back admissions get slots one interval apart; the first goes at once."""
    gate = AccountGate(redis_client, rate=10, burst=1)
    waits = [gate.admit("wxa", max_sleep_ms=10_000).wait_ms for _ in range(5)]
    interval = 1000 / (10 * RATE_SAFETY)
    assert waits[0] == 0
    for i, wait in enumerate(waits):
        assert wait == pytest.approx(i * interval, abs=15)


def test_gcra_answers_wait_without_reserving(redis_client: redis.Redis) -> None:
    """Past the longest wait the gate says how long, and reserves nothing."""
    gate = AccountGate(redis_client, rate=2, burst=1)
    assert gate.admit("wxa", max_sleep_ms=100).kind == "go"
    first = gate.admit("wxa", max_sleep_ms=100)
    second = gate.admit("wxa", max_sleep_ms=100)
    assert first.kind == second.kind == "wait"
    assert abs(first.wait_ms - second.wait_ms) <= 15  # the second did not queue behind the first
    assert 400 <= first.wait_ms <= 520


def test_burst_allows_that_many_at_once(redis_client: redis.Redis) -> None:
    """With burst 3, three calls go at once, the fourth waits an interval."""
    gate = AccountGate(redis_client, rate=5, burst=3)
    waits = [gate.admit("wxa", max_sleep_ms=10_000).wait_ms for _ in range(4)]
    assert waits[:3] == [0, 0, 0]
    assert waits[3] > 150


def test_accounts_are_limited_separately(redis_client: redis.Redis) -> None:
    """One account's calls do not use another's slots."""
    gate = AccountGate(redis_client, rate=1, burst=1)
    assert gate.admit("wxa").wait_ms == 0
    assert gate.admit("wxb").wait_ms == 0


def test_daily_budget_pauses_until_shanghai_midnight(redis_client: redis.Redis) -> None:
    """After the budget the account pauses until 00:00 Asia/Shanghai; resume lifts it."""
    gate = AccountGate(redis_client, rate=1000, daily_budget=2)
    assert [gate.admit("wxa").kind for _ in range(2)] == ["go", "go"]
    third = gate.admit("wxa")
    assert (third.kind, third.reason) == ("paused", "daily_budget")
    pause = gate.paused("wxa")
    assert pause is not None
    shanghai = (pause.until + 8 * 3600) % 86400
    assert shanghai == pytest.approx(0, abs=1)
    assert gate.resume("wxa") is True
    assert gate.admit("wxa").kind == "go"


def test_pauses_end_at_the_next_minute_and_keep_the_longer(redis_client: redis.Redis) -> None:
    """A 45011 pause ends at the next minute; a shorter pause never cuts a longer one."""
    gate = AccountGate(redis_client, rate=1000)
    ends = gate.pause("wxa", reason="quota", errcode=45011, how="minute")
    assert ends % 60 == 0 and 0 < ends - time.time() <= 60
    longer = gate.pause("wxa", reason="quota", errcode=45009, how="day")
    assert longer > ends
    assert gate.pause("wxa", reason="quota", errcode=45011, how="minute") == longer
    admission = gate.admit("wxa")
    assert admission.kind == "paused" and admission.reason == "quota"
