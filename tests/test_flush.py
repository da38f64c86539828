"""The flush step in-process: a real Redis, the simulator over HTTP, every failure path."""

from __future__ import annotations

import itertools
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import pytest
import redis
from structlog.testing import capture_logs

from producers.intents import make_intent
from tests.helpers import APPID, SECRET, Sim, fans_of, wait_until
from worker.accounts import Account, StaticAccounts
from worker.accounts.config import AccountConfig
from worker.dead_letters import DeadLetter, DeadLetters
from worker.flush import CALLS_PER_FLUSH, WORK_BUDGET_S, Flusher
from worker.gate import AccountGate
from worker.pending import PendingStore, TagKeys
from worker.split import Group, SplitPlan
from worker.wechat import WeChatClient
from worker.wechat.tokens import RedisTokenStore, TokenProvider


@dataclass
class Flushes:
    """The flush messages the flusher asked for: (tag, delay ms, reserved slot)."""

    sent: list[tuple[int, int, int | None]] = field(default_factory=list)

    def __call__(
        self, account: str, tag_id: int, delay_ms: int, *, slot_at: int | None = None
    ) -> None:
        self.sent.append((tag_id, delay_ms, slot_at))


@dataclass
class Rig:
    """A flusher wired to the test Redis and simulator, and what it works on."""

    flusher: Flusher
    store: PendingStore
    gate: AccountGate
    dead: DeadLetters
    flushes: Flushes
    redis: redis.Redis

    def add(self, tag_id: int, openids: list[str], op: str = "tag", ts: float = 1.0) -> None:
        """Intents straight into pending, already lingered (a full batch or an old one)."""
        self.store.ingest(
            make_intent(op, tag_id, o, ts + i / 1e4, APPID) for i, o in enumerate(openids)
        )
        self.redis.set(TagKeys(APPID, tag_id).key("since"), 0)

    def run(self, tag_id: int, *, rounds: int = 200) -> None:
        """Flush the tag, and again whenever it asks, until it asks no more."""
        self.flusher.flush(APPID, tag_id)
        for _ in range(rounds):
            mine = [f for f in self.flushes.sent if f[0] == tag_id]
            if not mine:
                return
            self.flushes.sent = [f for f in self.flushes.sent if f[0] != tag_id]
            _, delay_ms, slot_at = mine[-1]
            time.sleep(delay_ms / 1000)  # the delay the flush itself asked for
            self.flusher.flush(APPID, tag_id, slot_at=slot_at)
        raise AssertionError(f"tag {tag_id} still asked for flushes after {rounds} rounds")

    def letters(self) -> list[DeadLetter]:
        return [letter for _, letter in self.dead.scan()]

    def left(self, tag_id: int) -> int:
        status = [t for t in self.store.status() if t.tag_id == tag_id]
        return sum(t.unsettled for t in status)


def make_rig(
    redis_client: redis.Redis, client: WeChatClient, *, rate: float = 1000, **options: Any
) -> Rig:
    store = PendingStore(redis_client, linger_ms=100)
    gate = AccountGate(redis_client, rate=rate)
    dead = DeadLetters(redis_client)
    flushes = Flushes()
    flusher = Flusher(
        store=store,
        accounts=StaticAccounts(Account(AccountConfig(client.appid), client, gate)),
        dead_letters=dead,
        send_flush=flushes,
        backoff_min_ms=options.pop("backoff_min_ms", 20),
        backoff_max_ms=options.pop("backoff_max_ms", 100),
        **options,
    )
    return Rig(flusher, store, gate, dead, flushes, redis_client)


@pytest.fixture
def rig(redis_client: redis.Redis, client: WeChatClient) -> Rig:
    return make_rig(redis_client, client)


@pytest.fixture
def tag(client: WeChatClient) -> int:
    return client.create_tag("flush").id


def test_a_full_batch_is_applied_in_one_call(rig: Rig, sim: Sim, tag: int) -> None:
    """50 pending openids: one call of 50, all applied, nothing left or scheduled."""
    fans = sim.fans(50)
    rig.add(tag, fans)
    rig.run(tag)
    assert fans_of(sim, tag) == set(fans)
    assert sim.stats()["batch_sizes"]["tagging"] == {"50": 1}
    assert rig.left(tag) == 0 and rig.flushes.sent == []


def test_bad_openids_are_split_out_and_dead_lettered_once(rig: Rig, sim: Sim, tag: int) -> None:
    """3 bad openids in 50: the 47 good are applied, each bad one dead-lettered once."""
    good = sim.fans(47)
    foreign = sim.foreign(2)
    unknown = [good[0][:6] + "unknownfan0000000000000000"[:22]]
    batch = good[:10] + foreign[:1] + good[10:30] + unknown + good[30:] + foreign[1:]
    rig.add(tag, batch)
    rig.run(tag)
    assert fans_of(sim, tag) == set(good)
    letters = {letter.openid: letter for letter in rig.letters()}
    assert set(letters) == set(foreign + unknown)
    assert {letters[o].errcode for o in foreign} == {49003}
    assert letters[unknown[0]].errcode == 40003
    assert {letter.reason for letter in letters.values()} == {"permanent"}
    calls = len(sim.log())
    assert calls <= 2 * 3 * 5 + 2 * 3 + 1  # the halving bound for k = 3
    assert rig.left(tag) == 0


def test_a_split_that_must_wait_resumes_where_it_stopped(
    redis_client: redis.Redis, client: WeChatClient, sim: Sim, tag: int
) -> None:
    """Under a tight rate the split waits between calls; no group goes out whole twice and no
    settled openid is sent again."""
    # Given: 2 calls/s, so every call after the first waits for a slot further ahead
    rig = make_rig(redis_client, client, rate=2)
    good, bad = sim.fans(48), sim.foreign(2)
    rig.add(tag, good[:20] + bad[:1] + good[20:] + bad[1:])
    # When
    rig.flusher.flush(APPID, tag)
    # Then: the flush stopped at a wait, the split kept in Redis with its calls counted
    assert rig.flushes.sent and rig.flushes.sent[-1][2] is not None  # a reserved slot
    keys = TagKeys(APPID, tag)
    assert redis_client.hexists(keys.split("tag"), "~plan")
    rig.run(tag)
    log = sim.log()
    settled: set[str] = set()
    refused: list[frozenset[str]] = []
    for call in log:
        sent = frozenset(call["openids"])
        assert not sent & settled, "an applied or dead-lettered openid was sent again"
        assert sent not in refused, "a refused group went out whole again"
        if call["errcode"] == "0":
            settled |= sent
        else:
            refused.append(sent)
            if len(sent) == 1:
                settled |= sent
    assert fans_of(sim, tag) == set(good)
    assert {letter.openid for letter in rig.letters()} == set(bad)


def test_a_call_sent_late_after_its_check_moves_the_later_slots_back(
    redis_client: redis.Redis, client: WeChatClient, sim: Sim, tag: int
) -> None:
    """At 2 calls/s, a call whose thread waited for the GIL between its slot's check and its
    send (another thread holding it, as on a busy host) is accounted for after its answer:
    no three calls come within one second, so no calendar second can see three."""
    # Given: 3 batches of one tag, and a thread that, once the first call has its slot,
    # holds the GIL 150 ms at a time for 0.35 s (a busy process), then lets go
    rig = make_rig(redis_client, client, rate=2)
    rig.add(tag, sim.fans(150))
    slots = rig.gate.key(APPID, "rate")  # set by the first call's admission
    interval = sys.getswitchinterval()
    sys.setswitchinterval(0.15)

    def busy() -> None:
        deadline = time.monotonic() + 10
        while not redis_client.exists(slots) and time.monotonic() < deadline:
            pass
        until = time.monotonic() + 0.35
        while time.monotonic() < until:
            pass

    spinner = threading.Thread(target=busy)
    try:
        spinner.start()
        # When
        rig.run(tag)
    finally:
        spinner.join()
        sys.setswitchinterval(interval)
    # Then: the third call came a second and more after the first
    calls = sorted(call["at"] for call in sim.log())
    assert len(calls) == 3 and fans_of(sim, tag) == set(sim.fans(150))
    assert calls[2] - calls[0] >= 1.0, [round(at - calls[0], 3) for at in calls]


def test_a_flush_that_loses_its_lease_stops_and_writes_nothing(
    rig: Rig, sim: Sim, tag: int
) -> None:
    """Another flush took the tag during a call: this one logs flush.lease_lost and stops."""
    # Given: a slow call, and the lease taken over while it runs
    sim.config(latency_ms=[400, 400])
    fans = sim.fans(50)
    rig.add(tag, fans)
    keys = TagKeys(APPID, tag)
    with capture_logs() as logs:
        worker = threading.Thread(target=rig.flusher.flush, args=(APPID, tag))
        worker.start()
        wait_until(lambda: len(sim.log()) == 1, what="the call")
        rig.redis.set(keys.key("lease"), "another-flush", px=60_000)
        worker.join(timeout=10)
    # Then: WeChat applied it, but this flush acknowledged nothing and scheduled nothing
    assert any(event["event"] == "flush.lease_lost" for event in logs)
    assert rig.redis.hlen(keys.key("inflight")) == 51  # 50 openids and '~op'
    assert rig.redis.get(keys.key("lease")) == b"another-flush"
    assert rig.flushes.sent == [] and rig.letters() == []


def test_a_dead_letter_is_written_once_across_a_crash(rig: Rig, sim: Sim, tag: int) -> None:
    """A flush that died after writing dead letters but before dropping them: the next one
    settles them again without a second dead letter."""
    good, bad = sim.fans(3), sim.foreign(2)
    rig.add(tag, good + bad)
    rig.run(tag)
    assert len(rig.letters()) == 2
    # The crash leaves the two refused openids in a split, as before their drop.
    keys = TagKeys(APPID, tag)
    ts = {letter.openid: letter.ts for letter in rig.letters()}
    plan = SplitPlan([Group([o], True, 49003, "x") for o in bad], calls=5).to_json()
    rig.redis.hset(
        keys.split("tag"),
        mapping={"~op": "tag", "~plan": plan, **{o: repr(t) for o, t in ts.items()}},
    )
    rig.redis.sadd("tagsync:tags", f"{APPID}:{tag}")
    calls = len(sim.log())
    rig.run(tag)
    assert len(rig.letters()) == 2 and len(sim.log()) == calls
    assert rig.left(tag) == 0


def test_45159_for_a_tag_that_exists_is_retried(rig: Rig, sim: Sim, tag: int) -> None:
    """WeChat says 45159, tags/get lists the tag: a counted retry, no dead letter."""
    fans = sim.fans(10)
    rig.add(tag, fans)
    sim.config(spurious_45159_rate=1.0)
    rig.flusher.flush(APPID, tag)
    keys = TagKeys(APPID, tag)
    assert rig.letters() == []
    assert {int(v) for v in rig.redis.hvals(keys.key("attempts"))} == {1}
    assert sim.stats()["calls"].get("tags/get") == 1
    sim.config(spurious_45159_rate=0.0)
    rig.run(tag)
    assert fans_of(sim, tag) == set(fans) and rig.letters() == []


def test_45159_for_a_tag_that_is_gone_dead_letters_its_intents(rig: Rig, sim: Sim) -> None:
    """45159 and tags/get does not list the tag: every intent of it is dead-lettered."""
    rig.add(4242, sim.fans(3))
    rig.add(4242, sim.fans(2, offset=3), op="untag")
    rig.run(4242)
    letters = rig.letters()
    assert len(letters) == 5
    assert {(d.reason, d.errcode) for d in letters} == {("tag_gone", 45159)}
    later = rig.store.ingest([make_intent("tag", 4242, sim.fans(1)[0], 9.0, APPID)])
    assert len(later.gone) == 1  # refused at ingest from now on


def test_45009_pauses_that_api_only(rig: Rig, sim: Sim, tag: int) -> None:
    """Tagging's daily quota is used up: tagging pauses, untagging goes on in the same flush."""
    # Given: one call a day per API; one tagging call already spent
    sim.config(daily_quota=1)
    first, second, third = sim.fans(50), sim.fans(50, offset=50), sim.fans(50, offset=100)
    rig.add(tag, first)
    rig.run(tag)
    rig.add(tag, second, ts=2.0)
    rig.add(tag, third, op="untag", ts=2.0)
    # When
    rig.flusher.flush(APPID, tag)
    # Then
    assert set(rig.gate.pauses(APPID)) == {"tags/members/batchtagging"}
    assert sim.stats()["calls"].get("tags/members/batchuntagging") == 1  # untagging went on
    assert fans_of(sim, tag) == set(first)
    status = rig.store.status()[0]
    assert (status.pending_tag, status.pending_untag) == (50, 0)
    assert rig.letters() == []


def test_a_refused_secret_pauses_the_account_and_keeps_every_intent(
    redis_client: redis.Redis, sim: Sim, tag: int
) -> None:
    """The token endpoint refuses the secret: the account pauses (credentials), no attempt is
    counted, nothing is dead-lettered even with one attempt allowed."""
    modes: list[tuple[Literal["stable", "classic"], str]] = [
        ("stable", "40125"),
        ("classic", "40001"),
    ]
    for mode, errcode in modes:
        # No token cached: the next call must fetch one with the wrong secret.
        redis_client.delete(f"tagsync:{{{APPID}}}:pause", f"tagsync:{{{APPID}}}:token")
        wrong = WeChatClient(
            appid=APPID, secret="wrong-" + SECRET, api_base=sim.url, token_mode=mode,
            token_store=RedisTokenStore(redis_client, APPID),
        )  # fmt: skip
        rig = make_rig(redis_client, wrong, max_attempts=1)
        rig.add(tag, sim.fans(5))
        rig.flusher.flush(APPID, tag)
        pause = rig.gate.paused(APPID)
        assert pause is not None and (pause.reason, pause.errcode) == ("credentials", errcode)
        assert rig.letters() == [] and rig.left(tag) == 5
        assert not redis_client.exists(TagKeys(APPID, tag).key("attempts"))
        assert rig.flushes.sent[-1][1] > 0  # looks again after a while


@pytest.mark.parametrize("kind", ["not_json", "html_502", "no_errcode", "reset"])
def test_garbled_answers_are_counted_attempts(
    redis_client: redis.Redis, client: WeChatClient, sim: Sim, tag: int, kind: str
) -> None:
    """An answer that is not WeChat's JSON is retried with backoff; it never counts as applied
    unless WeChat applied it; after the attempts it is dead-lettered as retries_exhausted."""
    rig = make_rig(redis_client, client, max_attempts=2)
    fans = sim.fans(4)
    rig.add(tag, fans)
    sim.config(malformed_rate=1.0, malformed_kind=kind)
    rig.flusher.flush(APPID, tag)
    assert rig.letters() == [] and rig.left(tag) == 4  # one attempt counted, back to pending
    assert rig.flushes.sent[-1][1] >= 0
    rig.run(tag)
    letters = rig.letters()
    assert {(d.reason, d.attempts) for d in letters} == {("retries_exhausted", 2)}
    assert len(letters) == 4


def test_an_unknown_errcode_is_retried_five_times_then_dead_lettered(
    rig: Rig, sim: Sim, tag: int
) -> None:
    """errcode 12345: five counted attempts, then dead letters carrying its code and message."""
    sim.config(forced_errcodes={"tags/members/batchtagging": 12345})
    rig.add(tag, sim.fans(3))
    rig.run(tag)
    letters = rig.letters()
    assert {(d.reason, d.errcode, d.attempts) for d in letters} == {("unknown_errcode", 12345, 5)}
    assert all(d.errmsg for d in letters)
    assert len(sim.log()) == 5


def test_a_token_that_cannot_be_had_is_a_counted_attempt(
    rig: Rig, client: WeChatClient, sim: Sim, tag: int, redis_client: redis.Redis
) -> None:
    """Another process holds the token lock too long: the batch is retried later, not lost."""
    store = RedisTokenStore(redis_client, APPID)
    client.tokens = TokenProvider(client.fetch_token, store, wait_s=0.2)
    redis_client.delete(f"tagsync:{{{APPID}}}:token")
    redis_client.set(f"tagsync:{{{APPID}}}:token:lock", "someone-else", px=60_000)
    rig.add(tag, sim.fans(3))
    rig.flusher.flush(APPID, tag)
    assert rig.letters() == [] and rig.left(tag) == 3
    assert int(rig.redis.get(TagKeys(APPID, tag).key("failures")) or 0) == 1
    redis_client.delete(f"tagsync:{{{APPID}}}:token:lock")
    rig.run(tag)
    assert fans_of(sim, tag) == set(sim.fans(3))


def test_a_flush_never_sleeps_more_than_about_a_second(
    redis_client: redis.Redis, client: WeChatClient, sim: Sim, tag: int
) -> None:
    """At 4 calls/s with 8 batches waiting, one flush returns within ~1 s and keeps its slot."""
    rig = make_rig(redis_client, client, rate=4)
    rig.add(tag, sim.fans(400))
    started = time.monotonic()
    rig.flusher.flush(APPID, tag)
    took = time.monotonic() - started
    assert took < 1.3, took
    assert 1 <= len(sim.log()) <= 6
    assert rig.flushes.sent[-1][2] is not None  # comes back for a reserved slot


@pytest.fixture
def two_tags(client: WeChatClient) -> tuple[int, int]:
    return client.create_tag("first").id, client.create_tag("second").id


def test_tags_waiting_for_slots_take_turns(
    redis_client: redis.Redis, client: WeChatClient, sim: Sim, two_tags: tuple[int, int]
) -> None:
    """Two tags under a tight rate alternate: slots go to them in the order they asked."""
    rig = make_rig(redis_client, client, rate=5)
    a, b = two_tags
    rig.add(a, sim.fans(200))
    rig.add(b, sim.fans(200, offset=200))
    threads = [threading.Thread(target=rig.run, args=(t,)) for t in (a, b)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    order = [call["tagid"] for call in sim.log()]
    assert sorted(order) == [a] * 4 + [b] * 4
    # In turn: neither tag gets three slots in a row while the other waits.
    runs = [len(list(group)) for _, group in itertools.groupby(order)]
    assert max(runs) <= 2, order


def test_a_duplicate_flush_stands_aside_for_one_holding_a_slot(
    rig: Rig, sim: Sim, tag: int
) -> None:
    """A second flush message of a tag whose flush waits for a reserved slot does nothing:
    two chains of flushes would each hold a slot, and one of them would go unused."""
    rig.add(tag, sim.fans(50))
    rig.redis.set(TagKeys(APPID, tag).key("sched"), "slot", px=10_000)
    rig.flusher.flush(APPID, tag)
    assert sim.log() == [] and rig.flushes.sent == []
    assert rig.gate.reserved_ahead_ms(APPID) == 0  # no slot taken
    rig.flusher.flush(APPID, tag, slot_at=0)  # the holder (its slot long past): goes ahead
    assert len(sim.log()) == 1


def test_a_backlogged_accounts_batch_holds_for_the_backlog_then_goes(
    rig: Rig, sim: Sim, tag: int
) -> None:
    """While ingest merges a backlog of the account's intents, a lingered partial batch is
    not sent (more intents may fill it or supersede it): taken with the lease, it is put
    back and the tag looks again shortly; once the backlog mark ends, it goes."""
    # Given: 20 intents, lingered 5 s (the hold lasts to 30 s), the account backlogged
    fans = sim.fans(20)
    rig.add(tag, fans)
    seconds, micros = rig.redis.time()
    rig.redis.set(TagKeys(APPID, tag).key("since"), seconds * 1000 + micros // 1000 - 5000)
    rig.store.mark_backlog([APPID])
    # When
    rig.flusher.flush(APPID, tag)
    # Then: no call; every intent pending again (none left in flight); a look-again soon
    assert sim.log() == []
    keys = TagKeys(APPID, tag)
    assert rig.redis.zcard(keys.key("pending:tag")) == 20
    assert not rig.redis.exists(keys.key("inflight"))
    assert [(t, d) for t, d, _ in rig.flushes.sent] == [(tag, 250)]
    # When: the mark ends (ingest marks it for 1 s at a time)
    rig.redis.delete(f"tagsync:{{{APPID}}}:backlog")
    rig.flushes.sent.clear()
    rig.run(tag)
    # Then: one call with all 20
    assert [len(call["openids"]) for call in sim.log()] == [20]
    assert fans_of(sim, tag) >= set(fans)


def test_a_flush_yields_after_its_calls_or_its_second(rig: Rig, sim: Sim, tag: int) -> None:
    """A flush calling back to back makes CALLS_PER_FLUSH calls and hands the tag on at
    once; with slow answers it hands it on after WORK_BUDGET_S, so other tags get threads."""
    rig.add(tag, sim.fans(50 * (CALLS_PER_FLUSH + 8)))
    # When: WeChat answers at once
    rig.flusher.flush(APPID, tag)
    # Then: exactly CALLS_PER_FLUSH full calls, and the next flush asked for now
    assert [len(call["openids"]) for call in sim.log()] == [50] * CALLS_PER_FLUSH
    assert [(t, d) for t, d, _ in rig.flushes.sent] == [(tag, 0)]
    # When: WeChat answers in 200-250 ms
    sim.config(latency_ms=[200, 250])
    started = time.monotonic()
    rig.flusher.flush(APPID, tag, slot_at=rig.flushes.sent[-1][2])
    # Then: it stops at the first call that ends past its second: 4 or 5 calls
    assert 4 <= len(sim.log()) - CALLS_PER_FLUSH <= 5
    assert WORK_BUDGET_S <= time.monotonic() - started < WORK_BUDGET_S + 0.5
    assert rig.flushes.sent[-1][:2] == (tag, 0)
