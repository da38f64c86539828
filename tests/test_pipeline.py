"""The whole pipeline with real worker processes, a real Redis and the simulator over HTTP."""

from __future__ import annotations

import random
import time
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import producers
from tests.helpers import (
    APPID,
    Sim,
    backlog,
    ensure_fans,
    expected_state,
    fans_of,
    make_tags,
    wait_drained,
)
from worker.wechat import WeChatClient

pytestmark = pytest.mark.slow


def send_events(events: list[tuple[int, str, str, float]], *, per_call: int = 1) -> None:
    """Send events as separate producer calls (each its own queue message by default)."""
    for start in range(0, len(events), per_call):
        chunk = events[start : start + per_call]
        producers.send(
            [
                {"op": op, "tag_id": t, "openid": o, "ts": ts, "account": APPID}
                for t, o, op, ts in chunk
            ]
        )


def test_intents_reach_wechat(
    sim: Sim, client: WeChatClient, queue: redis.Redis, start_worker: Any
) -> None:
    """Tag and untag through the producers end as memberships in WeChat."""
    # Given
    start_worker()
    tag = client.create_tag("e2e").id
    fans = sim.fans(120)
    # When
    producers.tag(tag, fans, account=APPID, ts=time.time())
    producers.untag(tag, fans[:20], account=APPID, ts=time.time() + 1)
    wait_drained(queue)
    # Then
    assert fans_of(sim, tag) == set(fans[20:])


def test_random_interleavings_end_in_last_write_wins(
    sim: Sim, client: WeChatClient, queue: redis.Redis, start_worker: Any
) -> None:
    """Random tag/untag interleavings, sent out of ts order, end in the last-write-wins state."""
    # Given: a worker, three tags and eight fans shared by every example
    start_worker(processes=2, threads=4)
    tags = make_tags(client, 3)
    fans = sim.fans(8)
    events_strategy = st.lists(
        st.tuples(st.sampled_from(tags), st.sampled_from(fans), st.sampled_from(["tag", "untag"])),
        min_size=1,
        max_size=40,
    )

    @settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
    @given(shapes=events_strategy, data=st.data(), per_call=st.sampled_from([1, 3, 40]))
    def check(shapes: list[tuple[int, str, str]], data: st.DataObject, per_call: int) -> None:
        start = {t: fans_of(sim, t) for t in tags}
        # Distinct event times, in an order unrelated to the order of sending.
        order = data.draw(st.permutations(range(len(shapes))))
        base = time.time()
        events = [(t, o, op, base + order[i] * 0.001) for i, (t, o, op) in enumerate(shapes)]
        # When
        send_events(events, per_call=per_call)
        wait_drained(queue)
        # Then
        expected = expected_state(events, start)
        assert {t: fans_of(sim, t) for t in tags} == {t: expected.get(t, set()) for t in tags}

    check()


def test_worker_killed_mid_flush_loses_nothing(
    sim: Sim, client: WeChatClient, queue: redis.Redis, start_worker: Any
) -> None:
    """kill -9 of every worker process mid-flush, then a restart: the final state is right."""
    # Given: slow answers, so that flushes are in the middle of calls when the kill comes
    sim.config(latency_ms=[20, 40])
    tags = make_tags(client, 4)
    fans = ensure_fans(sim, 1500)
    rng = random.Random(3)
    base = time.time()
    events = [
        (rng.choice(tags), rng.choice(fans), rng.choice(["tag", "tag", "untag"]), base + i * 1e-4)
        for i in range(6000)
    ]
    first = start_worker(processes=2, threads=4)
    send_events(events, per_call=500)
    deadline = time.monotonic() + 30
    while sum(sim.stats()["batch_sizes"]["tagging"].values()) < 10:
        assert time.monotonic() < deadline, "no batch was sent"
        time.sleep(0.05)
    assert backlog(queue) > 0  # the kill comes with work under way
    # When
    first.kill()
    start_worker(processes=2, threads=4)
    wait_drained(queue, timeout_s=120)
    # Then
    expected = expected_state(events, {})
    assert {t: fans_of(sim, t) for t in tags} == {t: expected.get(t, set()) for t in tags}


def test_one_tag_is_never_flushed_twice_at_once(
    sim: Sim, client: WeChatClient, queue: redis.Redis, start_worker: Any
) -> None:
    """Two worker processes with four threads each never send two batches of one tag at once."""
    # Given
    sim.config(latency_ms=[20, 50])
    tags = make_tags(client, 3)
    fans = ensure_fans(sim, 2000)
    start_worker(processes=2, threads=4)
    # When: many messages per tag, so every thread has flushes to run
    base = time.time()
    events = [(tags[i % 3], fans[i % 2000], "tag", base + i * 1e-4) for i in range(6000)]
    send_events(events, per_call=100)
    wait_drained(queue, timeout_s=120)
    # Then
    stats = sim.stats()
    assert sum(stats["batch_sizes"]["tagging"].values()) >= 120
    assert stats["overlapping_batches"] == 0
    assert all(fans_of(sim, t) == set(fans) for t in tags)


def test_backlog_on_one_tag_goes_in_full_batches(
    sim: Sim, client: WeChatClient, queue: redis.Redis, start_worker: Any
) -> None:
    """10,000 pending intents on one tag: at least 99% of the calls carry 50 openids."""
    # Given
    tag = client.create_tag("backlog").id
    fans = ensure_fans(sim, 10_000)
    start_worker(processes=2, threads=4)
    # When
    producers.tag(tag, fans, account=APPID)
    wait_drained(queue, timeout_s=120)
    # Then
    sizes = sim.stats()["batch_sizes"]["tagging"]
    calls = sum(sizes.values())
    assert sizes.get("50", 0) >= 0.99 * calls
    assert len(fans_of(sim, tag)) == 10_000
