"""The account gate in a real Redis: GCRA spacing, budget, pauses."""

from __future__ import annotations

import time

import pytest
import redis

from worker.gate import RATE_SAFETY, SLOT_TOLERANCE_MS, AccountGate

TAGGING, UNTAGGING = "tags/members/batchtagging", "tags/members/batchuntagging"


def test_gcra_spaces_calls_and_reserves_short_waits(redis_client: redis.Redis) -> None:
    """Back-to-back admissions get slots one interval apart; the first goes at once."""
    gate = AccountGate(redis_client, rate=10, burst=1)
    waits = [gate.admit("wxa", api=TAGGING, max_sleep_ms=10_000).wait_ms for _ in range(5)]
    interval = 1000 / (10 * RATE_SAFETY)
    assert waits[0] == 0
    for i, wait in enumerate(waits):
        assert wait == pytest.approx(i * interval, abs=15)


def test_far_slots_are_reserved_in_turn_and_kept(redis_client: redis.Redis) -> None:
    """Past the longest sleep a caller gets a slot in turn to come back for; it is kept."""
    # Given: 2 calls/s, one slot just taken
    gate = AccountGate(redis_client, rate=2, burst=1)
    assert gate.admit("wxa", api=TAGGING, max_sleep_ms=100).kind == "go"
    # When: two more callers ask
    first = gate.admit("wxa", api=TAGGING, max_sleep_ms=100)
    second = gate.admit("wxa", api=TAGGING, max_sleep_ms=100)
    # Then: each holds its own slot, in the order asked, one interval apart
    assert first.kind == second.kind == "wait"
    assert first.slot_at is not None and second.slot_at is not None
    interval = 1000 / (2 * RATE_SAFETY)
    assert second.slot_at - first.slot_at == pytest.approx(interval, abs=2)
    # And coming back with a slot uses it without taking another
    again = gate.admit("wxa", api=TAGGING, slot_at=first.slot_at, max_sleep_ms=10_000)
    assert again.kind == "go" and again.slot_at == first.slot_at
    third = gate.admit("wxa", api=TAGGING, max_sleep_ms=10_000)
    assert third.slot_at == pytest.approx(second.slot_at + interval, abs=2)


def redis_ms(connection: redis.Redis) -> int:
    seconds, micros = connection.time()
    return int(seconds * 1000 + micros / 1000)


def test_a_late_slot_goes_and_moves_the_free_slots_back(redis_client: redis.Redis) -> None:
    """A reserved slot come back for 200 ms late, with no slot reserved after it, goes now;
    the next free slot moves back by the lateness, keeping its spacing from this call."""
    # Given: rate 2/s; a slot reserved and missed by 200 ms
    gate = AccountGate(redis_client, rate=2, burst=1)
    reserved = gate.admit("wxa", api=TAGGING)
    assert reserved.slot_at is not None
    late = reserved.slot_at - 200
    redis_client.set(gate.key("wxa", "rate"), late + gate.interval_ms)
    # When
    admission = gate.admit("wxa", api=TAGGING, slot_at=late)
    # Then
    assert (admission.kind, admission.moved, admission.slot_at) == ("go", True, late)
    following = gate.admit("wxa", api=TAGGING, max_sleep_ms=0)
    assert following.slot_at is not None
    assert following.slot_at - redis_ms(redis_client) >= gate.interval_ms - 20


def test_a_late_slot_with_slots_reserved_after_it_is_replaced(redis_client: redis.Redis) -> None:
    """A reserved slot come back for too late while a second's worth of slots follow it is
    given up: a new slot is taken after them."""
    # Given: rate 2/s; a missed slot, then 3 slots reserved after it
    gate = AccountGate(redis_client, rate=2, burst=1)
    stale = redis_ms(redis_client) - SLOT_TOLERANCE_MS - 50
    redis_client.set(gate.key("wxa", "rate"), stale + 4 * gate.interval_ms)
    # When
    admission = gate.admit("wxa", api=TAGGING, slot_at=stale)
    # Then
    assert not admission.moved and admission.slot_at is not None
    assert admission.slot_at >= stale + 4 * gate.interval_ms - 1


def test_an_api_pause_leaves_the_other_api_running(redis_client: redis.Redis) -> None:
    """45009 pauses one API (WeChat counts daily quotas per API); the other goes on."""
    gate = AccountGate(redis_client, rate=1000)
    gate.pause("wxa", api=TAGGING, reason="quota", errcode=45009, until="day")
    paused = gate.admit("wxa", api=TAGGING)
    assert (paused.kind, paused.scope) == ("paused", "api")
    assert gate.admit("wxa", api=UNTAGGING).kind == "go"
    ops, wait_ms = gate.paused_ops("wxa")
    assert ops == {"tag"} and wait_ms > 0
    assert set(gate.pauses("wxa")) == {TAGGING}
    assert gate.resume("wxa") is True
    assert gate.admit("wxa", api=TAGGING).kind == "go"
    assert gate.paused_ops("wxa") == (set(), 0)


def test_burst_allows_that_many_at_once(redis_client: redis.Redis) -> None:
    """With burst 3, three calls go at once, the fourth waits an interval."""
    gate = AccountGate(redis_client, rate=5, burst=3)
    waits = [gate.admit("wxa", api=TAGGING, max_sleep_ms=10_000).wait_ms for _ in range(4)]
    assert waits[:3] == [0, 0, 0]
    assert waits[3] > 150


def test_accounts_are_limited_separately(redis_client: redis.Redis) -> None:
    """One account's calls do not use another's slots."""
    gate = AccountGate(redis_client, rate=1, burst=1)
    assert gate.admit("wxa", api=TAGGING).wait_ms == 0
    assert gate.admit("wxb", api=TAGGING).wait_ms == 0


def test_daily_budget_pauses_until_shanghai_midnight(redis_client: redis.Redis) -> None:
    """After the budget the account pauses until 00:00 Asia/Shanghai; resume lifts it."""
    gate = AccountGate(redis_client, rate=1000, daily_budget=2)
    assert [gate.admit("wxa", api=TAGGING).kind for _ in range(2)] == ["go", "go"]
    third = gate.admit("wxa", api=TAGGING)
    assert (third.kind, third.reason) == ("paused", "daily_budget")
    pause = gate.paused("wxa")
    assert pause is not None
    shanghai = (pause.until + 8 * 3600) % 86400
    assert shanghai == pytest.approx(0, abs=1)
    assert gate.resume("wxa") is True
    assert gate.admit("wxa", api=TAGGING).kind == "go"


def test_pauses_end_at_the_next_minute_and_keep_the_longer(redis_client: redis.Redis) -> None:
    """A 45011 pause ends at the next minute; a shorter pause never cuts a longer one."""
    gate = AccountGate(redis_client, rate=1000)
    ends = gate.pause("wxa", reason="quota", errcode=45011, until="minute")
    assert ends % 60 == 0 and 0 < ends - time.time() <= 60
    longer = gate.pause("wxa", reason="quota", errcode=45009, until="day")
    assert longer > ends
    assert gate.pause("wxa", reason="quota", errcode=45011, until="minute") == longer
    admission = gate.admit("wxa", api=TAGGING)
    assert admission.kind == "paused" and admission.reason == "quota"
