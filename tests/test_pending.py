"""The pending buffers in a real Redis: last write wins, stale drops, leases, linger, recovery."""

from __future__ import annotations

import pytest
import redis

from producers.intents import Intent, make_intent
from tests.helpers import wait_until
from worker.base.lua import text
from worker.pending import Acked, LeaseLost, PendingStore, TagKeys

ACCOUNT = "wxpending"


def intent(op: str, openid: str, ts: float, tag_id: int = 7) -> Intent:
    return make_intent(op, tag_id, openid, ts, ACCOUNT)


@pytest.fixture
def store(redis_client: redis.Redis) -> PendingStore:
    return PendingStore(redis_client, linger_ms=200, ordering_window_s=3600)


def pending(store: PendingStore, op: str, tag_id: int = 7) -> dict[str, float]:
    keys = TagKeys(ACCOUNT, tag_id)
    key = keys.key(f"pending:{op}")
    members: list[tuple[bytes, float]] = store.redis.zrange(key, 0, -1, withscores=True)  # type: ignore[assignment]
    return {member.decode(): score for member, score in members}


def test_last_write_wins_by_ts(store: PendingStore) -> None:
    """Per fan only the intent with the latest ts stays pending, whatever the arrival order."""
    # Given / When
    result = store.ingest(
        [
            intent("tag", "a", 10),
            intent("untag", "a", 12),
            intent("tag", "a", 11),
            intent("untag", "b", 5),
        ]
    )
    # Then
    assert pending(store, "tag") == {}
    assert pending(store, "untag") == {"a": 12, "b": 5}
    assert (result.added, result.superseded, result.stale) == (2, 2, 0)


def test_ties_go_to_the_later_arrival(store: PendingStore) -> None:
    """Two intents with the same ts: the one that arrived last wins."""
    store.ingest([intent("tag", "a", 10)])
    store.ingest([intent("untag", "a", 10)])
    assert pending(store, "untag") == {"a": 10} and pending(store, "tag") == {}


def test_older_than_applied_is_stale(store: PendingStore) -> None:
    """After a batch is applied, an older intent for the same fan is dropped as stale."""
    # Given: tag a @ 20 applied
    store.ingest([intent("tag", "a", 20)])
    store.redis.set(TagKeys(ACCOUNT, 7).key("since"), 0)  # lingered long enough
    assert store.acquire(ACCOUNT, 7, "me", 10_000)
    took = store.take(ACCOUNT, 7, "me", 10_000)
    assert took.batch is not None
    assert store.ack(took.batch, "me") == Acked(applied=1, waiting=0)
    # When
    result = store.ingest([intent("untag", "a", 19), intent("untag", "a", 21, tag_id=8)])
    # Then: the late untag is dropped; the same fan on another tag is not affected
    assert result.stale == 1
    assert pending(store, "untag") == {}
    assert pending(store, "untag", tag_id=8) == {"a": 21}


def test_older_than_in_flight_is_stale_newer_waits(store: PendingStore) -> None:
    """While a batch is in flight, older intents for its fans drop, newer ones wait."""
    store.ingest([intent("tag", "a", 20), intent("tag", "b", 20)])
    store.redis.set(TagKeys(ACCOUNT, 7).key("since"), 0)
    store.acquire(ACCOUNT, 7, "me", 10_000)
    took = store.take(ACCOUNT, 7, "me", 10_000)
    assert took.batch is not None and sorted(took.batch.openids) == ["a", "b"]
    result = store.ingest([intent("untag", "a", 19), intent("untag", "b", 21)])
    assert result.stale == 1
    assert pending(store, "untag") == {"b": 21}


def test_fans_are_remembered_for_the_ordering_window_of_event_time(
    redis_client: redis.Redis,
) -> None:
    """A fan's taken intent makes older ones stale until events a window newer have been
    taken (two generations of the window), then it is forgotten."""
    store = PendingStore(redis_client, linger_ms=0, ordering_window_s=10)
    assert store.acquire(ACCOUNT, 7, "me", 10_000)

    def send(openid: str, ts: float) -> None:
        store.ingest([intent("tag", openid, ts)])
        took = store.take(ACCOUNT, 7, "me", 10_000)
        assert took.batch is not None and took.batch.openids == [openid]
        store.ack(took.batch, "me")

    send("a", 100)
    assert store.ingest([intent("untag", "a", 99)]).stale == 1
    send("b", 105)  # within the window of the first: the same generation
    send("c", 111)  # a window past the first: a new generation, "a" in the old one
    assert store.ingest([intent("untag", "a", 99)]).stale == 1
    send("d", 122)  # a window past "c": the generation holding "a" goes
    result = store.ingest([intent("untag", "a", 99), intent("untag", "c", 110)])
    assert (result.added, result.stale) == (1, 1)
    assert pending(store, "untag") == {"a": 99}


def test_an_applied_zset_left_by_an_earlier_version_is_not_in_the_way(store: PendingStore) -> None:
    """Before, the ack kept each fan's event time in an ``applied`` zset: a deployment
    upgraded with one in Redis takes, acks and drops stale intents as a fresh one does."""
    keys = TagKeys(ACCOUNT, 7)
    store.redis.zadd(keys.key("applied"), {"old-fan": 5.0})
    store.ingest([intent("tag", "a", 20)])
    store.redis.set(keys.key("since"), 0)
    assert store.acquire(ACCOUNT, 7, "me", 10_000)
    took = store.take(ACCOUNT, 7, "me", 10_000)
    assert took.batch is not None and took.batch.openids == ["a"]
    assert store.ack(took.batch, "me") == Acked(applied=1, waiting=0)
    assert store.ingest([intent("untag", "a", 19)]).stale == 1


def test_full_batch_flushes_at_once_partial_lingers(store: PendingStore) -> None:
    """50 of one op ask for an immediate flush; fewer wait for the linger."""
    small = store.ingest([intent("tag", f"p{i}", 1) for i in range(10)])
    assert small.flushes == {(ACCOUNT, 7): pytest.approx(200, abs=20)}
    full = store.ingest([intent("tag", f"f{i}", 1) for i in range(40)])
    assert full.flushes == {(ACCOUNT, 7): 0}
    again = store.ingest([intent("tag", "x", 1)])
    assert again.flushes == {}  # an immediate flush is already on its way


def test_take_waits_for_linger_then_takes_the_oldest(store: PendingStore) -> None:
    """A partial batch is taken only after the linger; a batch is one op, oldest first."""
    store.ingest([intent("untag", f"u{i}", 100 + i) for i in range(3)] + [intent("tag", "t", 1)])
    store.acquire(ACCOUNT, 7, "me", 10_000)
    first = store.take(ACCOUNT, 7, "me", 10_000)
    assert first.kind == "wait" and 0 < first.wait_ms <= 200
    # Polled until the linger is over (a look that takes the batch is undone by the next:
    # take() returns a batch left in flight to pending first).
    wait_until(lambda: store.take(ACCOUNT, 7, "me", 10_000).kind != "wait", what="the linger")
    second = store.take(ACCOUNT, 7, "me", 10_000)
    assert second.batch is not None
    assert (second.batch.op, second.batch.openids) == ("untag", ["u0", "u1", "u2"])


def test_batches_hold_at_most_50(store: PendingStore) -> None:
    """120 pending: batches of 50, 50, then 20."""
    store.ingest([intent("tag", f"o{i:03d}", i) for i in range(120)])
    store.acquire(ACCOUNT, 7, "me", 10_000)
    sizes = []
    for _ in range(3):
        took = store.take(ACCOUNT, 7, "me", 10_000)
        if took.batch is None:  # the remainder lingers: as if its linger were over
            store.redis.set(TagKeys(ACCOUNT, 7).key("since"), 0)
            took = store.take(ACCOUNT, 7, "me", 10_000)
        assert took.batch is not None
        sizes.append(len(took.batch.openids))
        store.ack(took.batch, "me")
    assert sizes == [50, 50, 20]
    assert store.take(ACCOUNT, 7, "me", 10_000).kind == "empty"


def test_ack_take_acks_a_batch_and_takes_the_next_in_one_call(store: PendingStore) -> None:
    """ack_take settles the batch as ack does, then answers what take would."""
    store.ingest([intent("tag", f"o{i:03d}", 1) for i in range(120)])
    assert store.acquire(ACCOUNT, 7, "me", 10_000)
    took = store.take(ACCOUNT, 7, "me", 10_000)
    assert took.batch is not None
    first = set(took.batch.openids)
    answers = []
    for _ in range(3):
        if took.batch is None:  # the remainder lingers: as if its linger were over
            store.redis.set(TagKeys(ACCOUNT, 7).key("since"), 0)
            took = store.take(ACCOUNT, 7, "me", 10_000)
        assert took.batch is not None
        acked, took = store.ack_take(took.batch, "me", 10_000)
        answers.append((acked, took.kind, len(took.batch.openids) if took.batch else 0))
    # 70 and 20 left pending after the first two acks; the third ack leaves nothing
    assert answers == [
        (Acked(50, 70), "batch", 50),
        (Acked(50, 20), "wait", 0),
        (Acked(20, 0), "empty", 0),
    ]
    sent = store.redis.hkeys(TagKeys(ACCOUNT, 7).key("sent"))
    assert {text(a) for a in sent} - {"~from"} == {f"o{i:03d}" for i in range(120)} > first
    assert not store.redis.exists(TagKeys(ACCOUNT, 7).key("inflight"))


def test_scripts_run_again_after_redis_forgot_them(store: PendingStore) -> None:
    """A Redis restarted or failed over holds none of the scripts: the store loads them
    again on NOSCRIPT and the call goes through; the batch keeps each intent's event time."""
    store.ingest([intent("tag", f"o{i:03d}", 1_700_000_000.25 + i) for i in range(60)])
    assert store.acquire(ACCOUNT, 7, "me", 10_000)
    store.redis.script_flush()
    took = store.take(ACCOUNT, 7, "me", 10_000)
    assert took.batch is not None
    assert took.batch.ts == {f"o{i:03d}": 1_700_000_000.25 + i for i in range(50)}
    store.redis.script_flush()
    acked, took = store.ack_take(took.batch, "me", 10_000)
    assert acked == Acked(50, 10) and took.kind == "wait"


def test_ack_take_passes_paused_ops_and_refuses_a_lost_lease(store: PendingStore) -> None:
    store.ingest([intent("tag", f"o{i:03d}", 1) for i in range(60)])
    store.ingest([intent("untag", f"u{i:03d}", 1) for i in range(60)])
    assert store.acquire(ACCOUNT, 7, "me", 10_000)
    took = store.take(ACCOUNT, 7, "me", 10_000, paused_ops={"untag"})
    assert took.batch is not None and took.batch.op == "tag"
    acked, took = store.ack_take(took.batch, "me", 10_000, paused_ops={"tag"})
    # the untag pause was lifted, the tag API paused: the next batch is the untags'
    assert acked == Acked(50, 70) and took.batch is not None and took.batch.op == "untag"
    store.redis.delete(TagKeys(ACCOUNT, 7).key("lease"))  # as if it expired
    assert store.acquire(ACCOUNT, 7, "other", 10_000)
    with pytest.raises(LeaseLost):
        store.ack_take(took.batch, "me", 10_000)
    # nothing acked: the untags are still in flight, for the lease's holder to restore
    assert store.redis.hlen(TagKeys(ACCOUNT, 7).key("inflight")) == 51
    history = TagKeys(ACCOUNT, 7).key("history")
    assert not store.redis.hexists(history, f"{took.batch.openids[0]} ok")


def test_lease_is_exclusive_and_a_lost_lease_cannot_settle(store: PendingStore) -> None:
    """One holder at a time; after the lease expires the old holder's ack is refused."""
    store.ingest([intent("tag", f"o{i}", 1) for i in range(50)])
    assert store.acquire(ACCOUNT, 7, "a", 200)
    assert not store.acquire(ACCOUNT, 7, "b", 200)
    took = store.take(ACCOUNT, 7, "a", 200)
    assert took.batch is not None
    store.redis.delete(TagKeys(ACCOUNT, 7).key("lease"))  # as if it expired
    assert store.acquire(ACCOUNT, 7, "b", 10_000)
    with pytest.raises(LeaseLost):
        store.ack(took.batch, "a")
    with pytest.raises(LeaseLost):
        store.take(ACCOUNT, 7, "a", 10_000)
    with pytest.raises(LeaseLost):
        store.renew(ACCOUNT, 7, "a", 10_000)


def test_a_dead_flushs_batch_returns_to_pending(store: PendingStore) -> None:
    """The next holder resends a dead holder's in-flight batch; newer intents win."""
    store.ingest([intent("tag", f"o{i}", 1) for i in range(50)])
    store.acquire(ACCOUNT, 7, "dead", 100)
    assert store.take(ACCOUNT, 7, "dead", 100).batch is not None
    store.ingest([intent("untag", "o0", 2)])  # newer than its in-flight intent
    wait_until(lambda: store.acquire(ACCOUNT, 7, "next", 10_000), what="the dead lease to expire")
    store.redis.set(TagKeys(ACCOUNT, 7).key("since"), 0)
    took = store.take(ACCOUNT, 7, "next", 10_000)
    assert took.restored == 49 and took.batch is not None
    assert (took.batch.op, len(took.batch.openids)) == ("tag", 49)
    assert pending(store, "untag") == {"o0": 2}


def test_nack_restores_and_counts_the_streak(store: PendingStore) -> None:
    """A transient failure puts the batch back and lengthens the tag's failure streak."""
    store.ingest([intent("tag", f"o{i}", 1) for i in range(50)])
    store.acquire(ACCOUNT, 7, "me", 10_000)
    for expected in (1, 2):
        took = store.take(ACCOUNT, 7, "me", 10_000)
        assert took.batch is not None
        result = store.retry(took.batch, "me", max_attempts=30)
        assert (result.restored, result.streak, result.exhausted) == (50, expected, [])
    took = store.take(ACCOUNT, 7, "me", 10_000)
    assert took.batch is not None
    store.ack(took.batch, "me")
    assert store.redis.get(TagKeys(ACCOUNT, 7).key("failures")) is None


def test_a_returned_partial_batch_is_retried_without_lingering_again(store: PendingStore) -> None:
    """After a failed partial batch, its intents are taken again at once: they waited already."""
    store.ingest([intent("tag", f"o{i}", 1) for i in range(5)])
    store.redis.set(TagKeys(ACCOUNT, 7).key("since"), 0)
    store.acquire(ACCOUNT, 7, "me", 10_000)
    took = store.take(ACCOUNT, 7, "me", 10_000)
    assert took.batch is not None
    store.retry(took.batch, "me", max_attempts=30)
    again = store.take(ACCOUNT, 7, "me", 10_000)
    assert again.batch is not None and len(again.batch.openids) == 5
    store.retry(again.batch, "me", max_attempts=30)
    assert store.release(ACCOUNT, 7, "me") == 0


def test_release_reschedules_when_work_remains(store: PendingStore) -> None:
    """Letting go of a tag with intents left schedules the next flush (no lost wake-up)."""
    store.ingest([intent("tag", f"o{i}", 1) for i in range(60)])
    store.acquire(ACCOUNT, 7, "me", 10_000)
    took = store.take(ACCOUNT, 7, "me", 10_000)
    assert took.batch is not None
    store.ack(took.batch, "me")
    delay = store.release(ACCOUNT, 7, "me")
    assert 0 <= delay <= 200
    assert store.redis.get(TagKeys(ACCOUNT, 7).key("sched")) in (b"now", b"later")
    assert store.release(ACCOUNT, 7, "me") == -1  # not the holder any more
    assert store.release(ACCOUNT, 7, "nobody", delay_ms=5) == -1


def test_sweep_claims_only_orphaned_tags(store: PendingStore) -> None:
    """The sweep sends a flush for a tag with work and no flush scheduled or running."""
    store.ingest([intent("tag", "a", 1, tag_id=1), intent("tag", "b", 1, tag_id=2)])
    assert store.sweep() == []  # both have a flush scheduled
    store.redis.delete(TagKeys(ACCOUNT, 1).key("sched"))
    assert store.sweep() == [(ACCOUNT, 1)]
    assert store.sweep() == []  # claimed now
    store.redis.delete(TagKeys(ACCOUNT, 2).key("sched"))
    store.acquire(ACCOUNT, 2, "busy", 10_000)
    assert store.sweep() == []  # a flush is running


def test_keys_share_one_cluster_slot_per_tag() -> None:
    """Every key of one (account, tag) carries the same hash tag."""
    keys = TagKeys(ACCOUNT, 7)
    names = [keys.key(name) for name in ("pending:tag", "pending:untag", "inflight", "lease")]
    names += [keys.split("tag"), *keys.for_script("take"), *keys.for_script("ingest")]
    assert all("{wxpending:7}" in name and name.startswith("tagsync:") for name in names)
