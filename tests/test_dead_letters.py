"""The dead-letter store against a real Redis: once per intent, redacted, bounded, filtered."""

from __future__ import annotations

import redis

from worker.dead_letters import DeadLetter, DeadLetters
from worker.observability.redaction import REDACTOR


def letter(openid: str = "o1", *, ts: float = 1.0, **changes: object) -> DeadLetter:
    fields: dict[str, object] = {
        "account": "wxdead", "tag_id": 7, "op": "tag", "openid": openid, "ts": ts,
        "reason": "permanent", "errcode": 40003, "errmsg": "invalid openid",
    }  # fmt: skip
    fields.update(changes)
    return DeadLetter(**fields)  # type: ignore[arg-type]


def test_an_intent_is_dead_lettered_once(redis_client: redis.Redis) -> None:
    """The same intent written twice (a crash between writing and dropping) is kept once;
    a newer intent of the same fan is its own."""
    store = DeadLetters(redis_client)
    assert store.add([letter()]) == 1
    assert store.add([letter(), letter(ts=2.0)]) == 1
    assert store.count() == 2


def test_rows_that_were_not_intents_are_told_apart_by_their_error(
    redis_client: redis.Redis,
) -> None:
    """Unreadable rows share their (empty) fields; each distinct one is still kept."""
    store = DeadLetters(redis_client)
    junk = [
        letter("None", reason="invalid_intent", errmsg=f"row: not {value}") for value in ("a", "b")
    ]
    assert store.add(junk) == 2


def test_errmsgs_are_redacted(redis_client: redis.Redis) -> None:
    """A token in WeChat's errmsg never reaches the stream."""
    token = "tok" + "Z" * 61
    REDACTOR.add(token)
    store = DeadLetters(redis_client)
    store.add([letter(errmsg=f"access_token={token} is invalid")])
    [(_, kept)] = list(store.scan())
    assert token not in kept.errmsg and "invalid" in kept.errmsg


def test_the_stream_is_trimmed_to_about_its_length(redis_client: redis.Redis) -> None:
    """Past ``max_len`` the oldest letters go (approximately: Redis trims whole nodes)."""
    store = DeadLetters(redis_client, max_len=10)
    store.add(letter(f"o{i}") for i in range(500))
    assert 10 <= store.count() <= 110


def test_scan_filters_by_errcode_and_tag(redis_client: redis.Redis) -> None:
    """--errcode and --tag select letters; every letter comes back whole."""
    store = DeadLetters(redis_client)
    store.add([letter("a"), letter("b", errcode=49003), letter("c", tag_id=8)])
    assert [d.openid for _, d in store.scan(errcode=49003)] == ["b"]
    assert [d.openid for _, d in store.scan(tag_id=8)] == ["c"]
    [(_, whole)] = list(store.scan(errcode=40003, tag_id=7))
    assert (whole.account, whole.op, whole.reason, whole.errcode) == (
        "wxdead", "tag", "permanent", 40003,
    )  # fmt: skip
