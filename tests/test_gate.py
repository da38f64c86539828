"""The account gate in a real Redis: GCRA spacing, the count of calls, budget, pauses."""

from __future__ import annotations

import time

import pytest
import redis

from worker.gate import LOW_RATE_SLACK_MS, RATE_SAFETY, SLOT_TOLERANCE_MS, AccountGate

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
    interval = (1000 + LOW_RATE_SLACK_MS) / 2  # below 4 calls/s: 50 ms a second kept free
    assert gate.interval_ms == interval
    assert second.slot_at - first.slot_at == pytest.approx(interval, abs=2)
    # And coming back with a slot uses it without taking another
    again = gate.admit("wxa", api=TAGGING, slot_at=first.slot_at, max_sleep_ms=10_000)
    assert again.kind == "go" and again.slot_at == first.slot_at
    third = gate.admit("wxa", api=TAGGING, max_sleep_ms=10_000)
    assert third.slot_at == pytest.approx(second.slot_at + interval, abs=2)


def test_admission_survives_a_redis_that_forgot_the_script(redis_client: redis.Redis) -> None:
    """After a restart or failover Redis holds no scripts: the gate loads its own again and
    the slots keep their spacing (the rate key outlived the script cache)."""
    gate = AccountGate(redis_client, rate=10, burst=1)
    first = gate.admit("wxa", api=TAGGING, max_sleep_ms=10_000)
    redis_client.script_flush()
    second = gate.admit("wxa", api=TAGGING, max_sleep_ms=10_000)
    assert first.slot_at is not None and second.slot_at is not None
    assert second.slot_at - first.slot_at == pytest.approx(1000 / (10 * RATE_SAFETY), abs=2)


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
    went_at = redis_ms(redis_client)
    admission = gate.admit("wxa", api=TAGGING, slot_at=late)
    # Then
    assert (admission.kind, admission.moved, admission.slot_at) == ("go", True, late)
    following = gate.admit("wxa", api=TAGGING, max_sleep_ms=0)
    assert following.slot_at is not None
    assert following.slot_at - redis_ms(redis_client) >= gate.interval_ms - 20
    # And the second call after it (2 calls/s) comes a second and the slack after it: the
    # late call reaches WeChat some ms after it goes, and must not share a second with both
    second = gate.admit("wxa", api=TAGGING, max_sleep_ms=0)
    assert second.slot_at is not None and second.slot_at >= went_at + 1000 + LOW_RATE_SLACK_MS


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


def test_calls_are_counted_without_a_budget(redis_client: redis.Redis) -> None:
    """With no daily budget the gate still counts every call it reserves a slot for, a far
    one ('wait') as well as a near one ('go'): `tagsync status` shows them."""
    # Given: 2 calls/s and no budget
    gate = AccountGate(redis_client, rate=2, burst=1)
    # When: three callers ask, two of them for slots further ahead than they sleep
    kinds = [gate.admit("wxa", api=TAGGING, max_sleep_ms=100).kind for _ in range(3)]
    # Then: three calls counted today, none paused
    assert kinds == ["go", "wait", "wait"]
    assert gate.budget_used("wxa") == 3
    assert gate.paused("wxa") is None


def test_a_reserved_slot_is_counted_once(redis_client: redis.Redis) -> None:
    """A call is counted when its slot is reserved: coming back for the slot in time, or
    late and moved, or late and given up for a new one, counts nothing more."""
    # Given: 2 calls/s and a budget of 3; one call made, and a slot reserved to come back for
    gate = AccountGate(redis_client, rate=2, burst=1, daily_budget=3)
    assert gate.admit("wxa", api=TAGGING, max_sleep_ms=100).kind == "go"
    reserved = gate.admit("wxa", api=TAGGING, max_sleep_ms=100)
    assert reserved.kind == "wait" and reserved.slot_at is not None
    assert gate.budget_used("wxa") == 2
    # When: the caller comes back for it in time
    again = gate.admit("wxa", api=TAGGING, slot_at=reserved.slot_at, max_sleep_ms=10_000)
    # Then: the same slot, still 2 calls
    assert (again.kind, again.slot_at) == ("go", reserved.slot_at)
    assert gate.budget_used("wxa") == 2

    # Given: a third call reserved (the budget's last), and its slot missed by 200 ms with
    # no slot reserved after it
    third = gate.admit("wxa", api=TAGGING, max_sleep_ms=10_000)
    assert third.slot_at is not None and gate.budget_used("wxa") == 3
    late = redis_ms(redis_client) - 200
    redis_client.set(gate.key("wxa", "rate"), late + gate.interval_ms)
    # When: it comes back late
    moved = gate.admit("wxa", api=TAGGING, slot_at=late)
    # Then: it goes, moved, not counted again
    assert (moved.kind, moved.moved) == ("go", True)
    assert gate.budget_used("wxa") == 3

    # Given: the same call's slot missed while 3 slots are reserved after it
    stale = redis_ms(redis_client) - SLOT_TOLERANCE_MS - 50
    redis_client.set(gate.key("wxa", "rate"), stale + 4 * gate.interval_ms)
    # When: it comes back late
    replaced = gate.admit("wxa", api=TAGGING, slot_at=stale, max_sleep_ms=10_000)
    # Then: a new slot for it, neither counted again nor paused by the budget it is within
    assert replaced.kind == "go" and not replaced.moved and replaced.slot_at != stale
    assert gate.budget_used("wxa") == 3
    # And a new call is past the budget: paused
    assert gate.admit("wxa", api=TAGGING).reason == "daily_budget"


def test_the_count_starts_again_each_shanghai_day(redis_client: redis.Redis) -> None:
    """A count of an earlier day reads 0 calls today, and the day's first call restarts it
    at 1 (with a budget or not)."""
    # Given: 50 calls counted yesterday (Asia/Shanghai), none today
    gate = AccountGate(redis_client, rate=1000)
    seconds, _ = redis_client.time()
    today = (seconds + 8 * 3600) // 86400
    redis_client.hset(gate.key("wxa", "budget"), mapping={"day": today - 1, "used": 50})
    # When / Then: nothing counted today until a call is made, then that one
    assert gate.budget_used("wxa") == 0
    assert gate.admit("wxa", api=TAGGING).kind == "go"
    assert gate.budget_used("wxa") == 1
    assert int(redis_client.hget(gate.key("wxa", "budget"), "day") or 0) == today


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
    assert gate.budget_used("wxa") == 2  # the refused call is not counted
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
