"""The ingest step in-process against a real Redis: rows in, pending out, nothing crashes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
import redis

from producers.intents import make_intent
from worker.dead_letters import DeadLetter, DeadLetters
from worker.ingest import ingest_rows
from worker.pending import PendingStore, TagKeys
from worker.split import Group, SplitPlan
from worker.tag_names import TagNames

ACCOUNT = "wxingest0000test"


@dataclass
class Flushes:
    """The flush messages ingest asked for: (account, tag, delay ms)."""

    sent: list[tuple[str, int, int]] = field(default_factory=list)

    def __call__(
        self, account: str, tag_id: int, delay_ms: int, *, slot_at: int | None = None
    ) -> None:
        self.sent.append((account, tag_id, delay_ms))


@dataclass
class Resolves:
    """The name resolutions ingest asked for: (account, name, rows)."""

    sent: list[tuple[str, str, list[list[Any]]]] = field(default_factory=list)

    def append_call(
        self,
        account: str,
        name: str,
        rows: list[list[Any]],
        attempt: int,
        delay_ms: int,
        slot_at: int | None = None,
    ) -> None:
        self.sent.append((account, name, rows))


@dataclass
class Ingest:
    store: PendingStore
    dead: DeadLetters
    flushes: Flushes
    resolves: Resolves = field(default_factory=Resolves)

    def __call__(self, rows: Any) -> Any:
        return ingest_rows(
            rows,
            store=self.store,
            dead_letters=self.dead,
            send_flush=self.flushes,
            accounts=frozenset({ACCOUNT}),
            names=TagNames(self.store.redis),
            send_resolve=self.resolves.append_call,
        )

    def letters(self) -> list[DeadLetter]:
        return [letter for _, letter in self.dead.scan()]

    def pending(self, tag_id: int, op: str) -> dict[str, float]:
        key = TagKeys(ACCOUNT, tag_id).key(f"pending:{op}")
        members: list[tuple[bytes, float]] = self.store.redis.zrange(key, 0, -1, withscores=True)  # type: ignore[assignment]
        return {m.decode(): score for m, score in members}


@pytest.fixture
def ingest(redis_client: redis.Redis) -> Ingest:
    return Ingest(PendingStore(redis_client, linger_ms=300), DeadLetters(redis_client), Flushes())


def row(op: str, tag_id: Any, openid: str, ts: Any = 100.0, account: str = ACCOUNT) -> list[Any]:
    return [op, tag_id, openid, ts, account]


def test_rows_are_merged_and_a_flush_is_asked_for_after_the_linger(ingest: Ingest) -> None:
    """A message of rows lands in its tags' pending buffers; each tag gets one flush."""
    result = ingest([row("tag", 7, "a"), row("untag", 7, "b"), row("tag", 8, "c")])
    assert result.added == 3
    assert ingest.pending(7, "tag") == {"a": 100.0} and ingest.pending(7, "untag") == {"b": 100.0}
    assert sorted((t, 250 <= d <= 300) for _, t, d in ingest.flushes.sent) == [(7, True), (8, True)]


def test_fifty_pending_ask_for_an_immediate_flush(ingest: Ingest) -> None:
    """A tag reaching 50 pending openids of one op is flushed at once, not after the linger."""
    ingest([row("tag", 7, f"o{i}") for i in range(49)])
    ingest([row("tag", 7, "o49")])
    assert ingest.flushes.sent[-1] == (ACCOUNT, 7, 0)


def test_a_duplicate_message_is_coalesced(ingest: Ingest) -> None:
    """The same rows delivered twice (at-least-once queue) leave one pending intent each."""
    rows = [row("tag", 7, "a"), row("tag", 7, "b")]
    ingest(rows)
    result = ingest(rows)
    assert result.superseded == 2 and ingest.pending(7, "tag") == {"a": 100.0, "b": 100.0}


@pytest.mark.parametrize(
    "bad",
    [
        None,
        "tag",
        {"op": "tag"},
        ["tag", 7],
        ["tag", "", "a", 1.0, ACCOUNT],
        ["tag", "x" * 31, "a", 1.0, ACCOUNT],
        ["tag", 7.0, "a", 1.0, ACCOUNT],
        ["tag", -1, "a", 1.0, ACCOUNT],
        ["tag", 7, "bad openid!", 1.0, ACCOUNT],
        ["tag", 7, "a", "yesterday", ACCOUNT],
        ["tag", 7, "a\n", 1.0, ACCOUNT],
        ["retag", 7, "a", 1.0, ACCOUNT],
        ["tag", 7, "a", 10**400, ACCOUNT],
        ["tag", 7, 10**5000, 1.0, ACCOUNT],
        ["tag", 10**5000, "a", float("inf"), [[[]]]],
        [["nested"]],
    ],
)
def test_rows_that_are_not_intents_are_dead_lettered_not_raised(ingest: Ingest, bad: Any) -> None:
    """Whatever a row holds, ingest dead-letters it as invalid_intent and merges the others."""
    result = ingest([bad, row("tag", 7, "good")])
    assert result.added == 1
    letters = ingest.letters()
    assert [letter.reason for letter in letters] == ["invalid_intent"]
    assert letters[0].errmsg


def test_an_account_without_credentials_is_dead_lettered(ingest: Ingest) -> None:
    """Intents for an account this worker does not serve go to the dead letters, named."""
    ingest([row("tag", 7, "a", account="wxsomeoneelse000")])
    letters = ingest.letters()
    assert [(d.reason, d.account) for d in letters] == [("unknown_account", "wxsomeoneelse000")]
    assert ingest.flushes.sent == []


def test_intents_for_a_gone_tag_are_dead_lettered_at_once(ingest: Ingest) -> None:
    """Once WeChat said a tag does not exist, its new intents are dead-lettered uncalled."""
    store = ingest.store
    store.acquire(ACCOUNT, 9, "flush", 10_000)
    store.tag_gone(ACCOUNT, 9, "flush")
    result = ingest([row("tag", 9, "a"), row("untag", 9, "b")])
    assert len(result.gone) == 2 and result.flushes == {}
    assert {(d.reason, d.errcode) for d in ingest.letters()} == {("tag_gone", 45159)}


def test_a_newer_intent_takes_a_fan_out_of_a_waiting_split(ingest: Ingest) -> None:
    """A split may wait long (a paused API): a newer intent for one of its fans replaces it;
    an older one is stale."""
    # Given: a split of tag 7 holding a and b at ts 100
    store = ingest.store
    store.ingest([make_intent("tag", 7, o, 100.0, ACCOUNT) for o in ("a", "b")])
    store.redis.set(TagKeys(ACCOUNT, 7).key("since"), 0)
    store.acquire(ACCOUNT, 7, "flush", 10_000)
    took = store.take(ACCOUNT, 7, "flush", 10_000)
    assert took.batch is not None
    store.suspect(took.batch, "flush", SplitPlan([Group(["a", "b"], True, 45059, "")], calls=1))
    # When: untag a at 101 (newer), tag b at 99 (older)
    result = ingest([row("untag", 7, "a", ts=101.0), row("tag", 7, "b", ts=99.0)])
    # Then
    assert (result.superseded, result.stale) == (1, 1)
    assert ingest.pending(7, "untag") == {"a": 101.0}
    split = store.redis.hgetall(TagKeys(ACCOUNT, 7).split("tag"))
    assert set(split) == {b"~op", b"~plan", b"b"}


def test_a_named_tag_the_cache_knows_is_merged_under_its_id(ingest: Ingest) -> None:
    """An intent naming a cached tag coalesces with intents numbering it (one last write)."""
    # Given "VIP" is tag 7 in the account's name cache
    TagNames(ingest.store.redis).add(ACCOUNT, "VIP", 7)
    # When the same fan is tagged by id, then untagged by name, later
    ingest([row("tag", 7, "a", 100.0), row("untag", "VIP", "a", 101.0)])
    # Then one intent is pending, the later one, under tag 7; nothing went to the resolver
    assert ingest.pending(7, "tag") == {} and ingest.pending(7, "untag") == {"a": 101.0}
    assert ingest.resolves.sent == []


def test_unknown_names_go_to_the_resolver_once_per_account_and_name(ingest: Ingest) -> None:
    """Rows naming a tag the cache lacks are sent to the resolver, grouped, not merged."""
    # Given an empty name cache
    # When a message names two unknown tags, one of them twice
    result = ingest([row("tag", "VIP", "a"), row("tag", "Gold", "b"), row("untag", "VIP", "c")])
    # Then nothing is merged and the resolver gets one message per name with its rows
    assert result.added == 0
    assert sorted((name, [r[2] for r in rows]) for _, name, rows in ingest.resolves.sent) == [
        ("Gold", ["b"]),
        ("VIP", ["a", "c"]),
    ]
