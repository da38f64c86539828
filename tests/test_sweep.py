"""The sweep in-process against a real Redis and the simulator: lost wake-ups, gone tags, pauses."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis

import producers
from producers.intents import make_intent
from tests.helpers import APPID, Sim, fans_of, make_tags, wait_drained, wait_until
from worker.gate import AccountGate
from worker.pending import PendingStore, TagKeys
from worker.queues import FLUSH_QUEUE
from worker.sweep import lift_pause, revive_tags, sweep_once
from worker.wechat import WeChatClient


@dataclass
class Flushes:
    """The flush messages the sweep sent: (account, tag)."""

    sent: list[tuple[str, int]] = field(default_factory=list)

    def __call__(
        self, account: str, tag_id: int, delay_ms: int, *, slot_at: int | None = None
    ) -> None:
        self.sent.append((account, tag_id))


def test_a_tag_with_work_and_no_flush_coming_gets_one(redis_client: redis.Redis) -> None:
    """An orphaned tag (its flush message lost) gets a flush; one scheduled or running, none."""
    # Given: tags 1 and 2 with pending intents; 1's flush message was lost, 2's is running
    store = PendingStore(redis_client)
    store.ingest([make_intent("tag", t, "a", 1.0, APPID) for t in (1, 2, 3)])
    redis_client.delete(TagKeys(APPID, 1).key("sched"), TagKeys(APPID, 2).key("sched"))
    store.acquire(APPID, 2, "running", 10_000)
    flushes = Flushes()
    # When
    sent = sweep_once(store, flushes)
    # Then: 1 only (3's flush is still scheduled)
    assert sent == 1 and flushes.sent == [(APPID, 1)]


def test_one_process_sweeps_per_interval(redis_client: redis.Redis) -> None:
    """Sweeps from several processes within one interval: only the first looks."""
    store = PendingStore(redis_client)
    store.ingest([make_intent("tag", 1, "a", 1.0, APPID)])
    redis_client.delete(TagKeys(APPID, 1).key("sched"))
    first, second = Flushes(), Flushes()
    sweep_once(store, first, interval_s=60)
    redis_client.delete(TagKeys(APPID, 1).key("sched"))  # orphaned again at once
    sweep_once(store, second, interval_s=60)
    assert first.sent == [(APPID, 1)] and second.sent == []


def test_a_gone_tag_revives_when_listed_again(
    sim: Sim, client: WeChatClient, redis_client: redis.Redis
) -> None:
    """A gone tag id is accepted again once tags/get lists it."""
    store = PendingStore(redis_client)
    store.acquire(APPID, 101, "test", 10_000)
    store.tag_gone(APPID, 101, "test")
    assert revive_tags(store, client) == 0
    client.create_tag("a")  # id 100
    client.create_tag("b")  # id 101: listed now
    assert revive_tags(store, client) == 1
    assert store.gone_tags() == []


def test_reviving_waits_while_the_account_is_paused(
    sim: Sim, client: WeChatClient, redis_client: redis.Redis
) -> None:
    """The look at tags/get passes the gate: a paused account makes no call for it."""
    store = PendingStore(redis_client)
    gate = AccountGate(redis_client, rate=100)
    store.acquire(APPID, 100, "test", 10_000)
    store.tag_gone(APPID, 100, "test")
    client.create_tag("a")
    calls = sim.stats()["calls"].get("tags/get", 0)
    gate.pause(APPID, reason="quota", errcode=45011, until="minute")
    assert revive_tags(store, client, gate) == 0
    assert sim.stats()["calls"].get("tags/get", 0) == calls
    gate.resume(APPID)
    assert revive_tags(store, client, gate) == 1


def test_lifting_a_pause_wakes_the_tags_waiting_it_out(redis_client: redis.Redis) -> None:
    """Tags waiting out a pause lose their delayed look-again and get a flush at once (not
    from the sweep, a second or more later); others keep theirs."""
    store = PendingStore(redis_client)
    gate = AccountGate(redis_client, rate=100)
    store.ingest([make_intent("tag", t, "a", 1.0, APPID) for t in (1, 2)])
    gate.pause(APPID, reason="quota", errcode=45009, until="day")
    redis_client.set(TagKeys(APPID, 1).key("sched"), "backoff", px=60_000)
    redis_client.set(TagKeys(APPID, 2).key("sched"), "slot", px=60_000)
    assert lift_pause(gate, store, APPID) is True
    assert gate.pauses(APPID) == {}
    assert redis_client.get(TagKeys(APPID, 1).key("sched")) == b"now"
    assert redis_client.get(TagKeys(APPID, 2).key("sched")) == b"slot"
    sent = [
        json.loads(redis_client.hget(f"dramatiq:{FLUSH_QUEUE}.msgs", message_id) or b"{}")
        for message_id in redis_client.lrange(f"dramatiq:{FLUSH_QUEUE}", 0, -1)
    ]
    assert [(m["actor_name"], m["args"]) for m in sent] == [("flush", [APPID, 1, None])]


@pytest.mark.processes
def test_a_lifted_pause_needs_no_rescue_from_the_sweep(
    sim: Sim, client: WeChatClient, start_worker: Any, queue: redis.Redis
) -> None:
    """Workers at a tight rate, a pause met and lifted mid-stream: every tag is flushed by
    the pipeline's own messages, none by the sweep's lost wake-up insurance."""
    # Given: six tags with work, the account paused while more intents come
    tags = make_tags(client, 6, prefix="wake")
    fans = sim.fans(300)
    worker = start_worker(processes=2, threads=4, TAGSYNC_RATE="20")
    gate, store = AccountGate(queue, rate=20), PendingStore(queue)
    for tag in tags:
        producers.tag(tag, fans[:100], account=APPID)
    gate.pause(APPID, reason="bench", errcode=None, until="for", ms=60_000)
    for tag in tags:
        producers.tag(tag, fans[100:], account=APPID)
    wait_until(lambda: store.waiting(APPID, tags[-1]) > 0, what="intents merged while paused")
    # When
    lift_pause(gate, store, APPID)
    wait_drained(queue, timeout_s=60)
    # Then
    assert all(fans_of(sim, tag) == set(fans) for tag in tags)
    assert "sweep.rescheduled" not in worker.logs()
