"""Producers: the Python API, JSON lines and HTTP reject bad input whole and enqueue good input."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import redis
import requests

import producers
import producers._queue
from producers.intents import QUEUE_NAME
from tests.helpers import APPID, wait_until
from worker.runtime.processes import free_port
from worker.runtime.redis_server import RedisServer

QUEUE = f"dramatiq:{QUEUE_NAME}"
OPENID = "o" + "A" * 27


@pytest.fixture
def queue(queue: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> redis.Redis:
    """The shared producer queue, with WECHAT_APPID as the default account."""
    monkeypatch.setenv("WECHAT_APPID", APPID)
    return queue


def queued_intents(queue: redis.Redis) -> list[list[Any]]:
    """Every intent row in the queue's messages, in order."""
    rows: list[list[Any]] = []
    for message_id in queue.lrange(QUEUE, 0, -1):
        message = json.loads(queue.hget(f"{QUEUE}.msgs", message_id) or b"{}")
        assert message["actor_name"] == "ingest" and message["queue_name"] == QUEUE_NAME
        rows.extend(message["args"][0])
    return rows


# -- the Python API ------------------------------------------------------------------------


def test_tag_one_and_many(queue: redis.Redis) -> None:
    """tag() takes one openid or an iterable; untag() too; ts and account get defaults."""
    before = time.time()
    assert producers.tag(100, OPENID) == 1
    assert producers.untag(101, (f"o{i:027d}" for i in range(3)), ts=5.0, account="wxother") == 3
    rows = queued_intents(queue)
    assert rows[0][:3] == ["tag", 100, OPENID] and rows[0][4] == APPID
    assert before <= rows[0][3] <= time.time()
    assert [r[0] for r in rows[1:]] == ["untag"] * 3
    assert {(r[3], r[4]) for r in rows[1:]} == {(5.0, "wxother")}


def test_concurrent_calls_share_a_message_and_each_returns_once_enqueued(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Calls made while another is being sent wait for it, then go together in one message
    (a group commit); each returns only once its own intents are on the queue."""
    # Given: a Redis of the test's own, stalled while the first call is being sent
    monkeypatch.setenv("WECHAT_APPID", APPID)
    with RedisServer() as server:
        producers.configure(redis_url=server.url)
        connection = redis.Redis.from_url(server.url)
        try:
            producers.tag(100, OPENID)  # connects
            server.freeze()
            returned: list[int] = []
            first = threading.Thread(target=lambda: returned.append(producers.tag(101, OPENID)))
            first.start()
            wait_until(lambda: producers._queue._GROUP._sending, what="the first call sending")
            # When: eight more calls come while it is stuck
            others = [
                threading.Thread(
                    target=lambda i=i: returned.append(producers.tag(200 + i, f"o{i:027d}"))
                )
                for i in range(8)
            ]
            for thread in others:
                thread.start()
            wait_until(lambda: len(producers._queue._GROUP._waiting) == 8, what="8 waiting")
            assert returned == []  # nobody returned before its intents were enqueued
            server.thaw()
            for thread in (first, *others):
                thread.join(timeout=30)
            # Then: 3 messages for 10 calls (the connect, the stuck one, the eight together)
            assert sorted(returned) == [1] * 9
            assert connection.llen(QUEUE) == 3
            assert len(queued_intents(connection)) == 10
        finally:
            server.thaw()
            connection.close()
            producers.configure(None)


def test_a_failed_group_fails_every_call_in_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """When the group's send fails, every call in it raises: none is told it was accepted."""
    monkeypatch.setenv("WECHAT_APPID", APPID)
    producers.configure(redis_url=f"redis://127.0.0.1:{free_port()}/0")
    try:
        errors: list[BaseException] = []

        def call(i: int) -> None:
            try:
                producers.tag(300 + i, OPENID)
            except redis.RedisError as exc:
                errors.append(exc)

        threads = [threading.Thread(target=call, args=(i,)) for i in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        assert len(errors) == 6
    finally:
        producers.configure(None)


def test_large_calls_go_in_messages_of_1000(queue: redis.Redis) -> None:
    """2,500 openids become three messages of 1,000, 1,000 and 500."""
    openids = [f"o{i:027d}" for i in range(2500)]
    assert producers.tag(100, openids) == 2500
    sizes = [
        len(json.loads(queue.hget(f"{QUEUE}.msgs", m) or b"")["args"][0])
        for m in queue.lrange(QUEUE, 0, -1)
    ]
    assert sorted(sizes) == [500, 1000, 1000]


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda: producers.tag(-1, OPENID), "tag_id"),
        (lambda: producers.tag(True, OPENID), "tag_id"),
        (lambda: producers.tag("", OPENID), "tag"),
        (lambda: producers.tag("100", OPENID), "tag_id"),
        (lambda: producers.tag("x" * 31, OPENID), "tag"),
        (lambda: producers.tag(b"VIP", OPENID), "tag_id"),  # type: ignore[arg-type]
        (lambda: producers.tag(100, [OPENID, "bad openid!"]), "openid"),
        (lambda: producers.tag(100, [OPENID, "x" * 65]), "openid"),
        (lambda: producers.tag(100, OPENID, ts=float("nan")), "ts"),
        (lambda: producers.tag(100, OPENID, ts=time.time() * 1000), "ts"),
        (lambda: producers.tag(100, OPENID, account="no spaces"), "account"),
        (
            lambda: producers.send(
                [
                    {"op": "tag", "tag_id": 1, "openid": OPENID},
                    {"op": "flip", "tag_id": 1, "openid": OPENID},
                ]
            ),
            "op",
        ),
        (lambda: producers.send([{"op": "tag", "tag_id": 1}]), "openid"),
        (
            lambda: producers.send([{"op": "tag", "tag_id": 1, "openid": OPENID, "tagid": 2}]),
            "tagid",
        ),
        (lambda: producers.send(["not an object"]), "intent"),
    ],
)
def test_bad_input_raises_and_enqueues_nothing(queue: redis.Redis, call: Any, field: str) -> None:
    """A call with one bad intent raises InvalidIntent naming the field; nothing is enqueued."""
    with pytest.raises(producers.InvalidIntent) as caught:
        call()
    assert caught.value.field == field
    assert isinstance(caught.value, ValueError)
    assert queue.llen(QUEUE) == 0


def test_error_names_the_index(queue: redis.Redis) -> None:
    """The error says which intent of the call is bad."""
    with pytest.raises(producers.InvalidIntent, match=r"intent 1: openid") as caught:
        producers.tag(100, [OPENID, "bad!", OPENID])
    assert caught.value.index == 1


def test_no_account_is_an_error(queue: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without account= and WECHAT_APPID the intent has no account."""
    monkeypatch.delenv("WECHAT_APPID")
    with pytest.raises(producers.InvalidIntent, match="account"):
        producers.tag(100, OPENID)


# -- the batching Producer -----------------------------------------------------------------


def test_producer_batches_and_flushes_on_exit(queue: redis.Redis) -> None:
    """Many small calls become few messages; close() sends what is left."""
    with producers.Producer(linger_ms=50) as producer:
        for i in range(2500):
            producer.tag(100, f"o{i:027d}")
    rows = queued_intents(queue)
    assert len(rows) == 2500
    assert queue.llen(QUEUE) <= 10


def test_producer_is_thread_safe(queue: redis.Redis) -> None:
    """Eight threads adding at once: every intent is enqueued exactly once."""
    with producers.Producer(linger_ms=2) as producer:

        def add(thread: int) -> None:
            for i in range(500):
                producer.untag(7, f"t{thread}x{i:024d}")

        threads = [threading.Thread(target=add, args=(t,)) for t in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    openids = [row[2] for row in queued_intents(queue)]
    assert len(openids) == 4000 == len(set(openids))


def test_producer_rejects_bad_input_in_the_callers_thread(queue: redis.Redis) -> None:
    """A bad intent raises at once and nothing of that call is buffered."""
    with producers.Producer() as producer:
        with pytest.raises(producers.InvalidIntent):
            producer.tag(100, [OPENID, "bad!"])
        producer.tag(100, OPENID)
    assert [row[2] for row in queued_intents(queue)] == [OPENID]


def test_producer_keeps_intents_when_redis_is_down(monkeypatch: pytest.MonkeyPatch) -> None:
    """If the queue cannot be reached, close() raises and says so, and the intents stay
    buffered: once Redis answers, flush() sends them."""
    monkeypatch.setenv("WECHAT_APPID", APPID)
    port = free_port()
    producers.configure(redis_url=f"redis://127.0.0.1:{port}/0")
    try:
        producer = producers.Producer(linger_ms=1)
        producer.tag(100, OPENID)
        producer.untag(101, OPENID)
        with pytest.raises(redis.ConnectionError):
            producer.close()
        with RedisServer(port=port) as server:
            assert producer.flush() == 2
            rows = queued_intents(redis.Redis.from_url(server.url))
            assert sorted((r[0], r[1]) for r in rows) == [("tag", 100), ("untag", 101)]
    finally:
        producers.configure(None)


# -- JSON lines ----------------------------------------------------------------------------


def run_produce(
    env: dict[str, str], *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker", "produce", *args],
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        check=False,
    )


def test_produce_json_lines(env: dict[str, str], redis_client: redis.Redis, tmp_path: Path) -> None:
    """Every valid line is enqueued; blank lines are skipped."""
    lines = [json.dumps({"op": "tag", "tag_id": 100, "openid": f"o{i:027d}"}) for i in range(1500)]
    path = tmp_path / "intents.jsonl"
    path.write_text("\n".join(lines[:700]) + "\n\n" + "\n".join(lines[700:]) + "\n")
    result = run_produce(env, str(path))
    assert result.returncode == 0, result.stderr
    assert "enqueued 1500 intents" in result.stdout
    assert redis_client.llen(QUEUE) == 2


def test_produce_reports_bad_lines_and_enqueues_nothing(
    env: dict[str, str], redis_client: redis.Redis
) -> None:
    """Bad lines are reported with their numbers; nothing of the file is enqueued."""
    good = json.dumps({"op": "tag", "tag_id": 100, "openid": OPENID})
    text = (
        "\n".join(
            [good, "{not json", good, json.dumps({"op": "tag", "tag_id": -5, "openid": OPENID})]
        )
        + "\n"
    )
    result = run_produce(env, "-", stdin=text)
    assert result.returncode == 2
    assert "line 2: not JSON" in result.stderr
    assert "line 4: tag_id" in result.stderr
    assert "nothing enqueued" in result.stderr
    assert redis_client.llen(QUEUE) == 0


def test_produce_dry_run(env: dict[str, str], redis_client: redis.Redis) -> None:
    """--dry-run checks and enqueues nothing."""
    result = run_produce(
        env, "--dry-run", stdin=json.dumps({"op": "untag", "tag_id": 1, "openid": OPENID}) + "\n"
    )
    assert result.returncode == 0 and "1 intents are valid" in result.stdout
    assert redis_client.llen(QUEUE) == 0


# -- HTTP ----------------------------------------------------------------------------------


AUTH = {"Authorization": "Bearer s3cret-ingest-token"}


def test_http_accepts_valid_intents(ingest_url: str, redis_client: redis.Redis) -> None:
    """202 with the count; the intents are on the queue."""
    body = {"intents": [{"op": "tag", "tag_id": 100, "openid": OPENID, "account": APPID}] * 3}
    response = requests.post(f"{ingest_url}/v1/intents", json=body, headers=AUTH, timeout=10)
    assert response.status_code == 202 and response.json() == {"accepted": 3}
    assert len(queued_intents(redis_client)) == 3


def test_http_rejects_bad_intents_whole(ingest_url: str, redis_client: redis.Redis) -> None:
    """400 lists every bad intent by index and field; nothing is enqueued."""
    body = {
        "intents": [
            {"op": "tag", "tag_id": 100, "openid": OPENID},
            {"op": "tag", "tag_id": "x", "openid": OPENID},
            {"op": "nope", "tag_id": 1, "openid": OPENID},
        ]
    }
    response = requests.post(f"{ingest_url}/v1/intents", json=body, headers=AUTH, timeout=10)
    assert response.status_code == 400
    errors = response.json()["errors"]
    assert [(e["index"], e["field"]) for e in errors] == [(1, "tag_id"), (2, "op")]
    assert redis_client.llen(QUEUE) == 0


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret-ingest-token"}],
)
def test_http_requires_the_token(
    ingest_url: str, redis_client: redis.Redis, headers: dict[str, str]
) -> None:
    """401 without the right bearer token."""
    body = {"intents": [{"op": "tag", "tag_id": 100, "openid": OPENID}]}
    response = requests.post(f"{ingest_url}/v1/intents", json=body, headers=headers, timeout=10)
    assert response.status_code == 401
    assert redis_client.llen(QUEUE) == 0


def test_http_refuses_bodies_over_1_mib(ingest_url: str) -> None:
    """413 for a body over 1 MiB; malformed bodies are 400."""
    big = b'{"intents": [' + b" " * (1024 * 1024) + b"]}"
    response = requests.post(
        f"{ingest_url}/v1/intents",
        data=big,
        headers={**AUTH, "Content-Type": "application/json"},
        timeout=10,
    )
    assert response.status_code == 413
    for bad in (b"{nope", b"[]", b'{"intents": 3}'):
        response = requests.post(f"{ingest_url}/v1/intents", data=bad, headers=AUTH, timeout=10)
        assert response.status_code == 400


def test_http_health(ingest_url: str) -> None:
    """GET /healthz answers 200 while Redis answers."""
    response = requests.get(f"{ingest_url}/healthz", timeout=10)
    assert response.status_code == 200 and response.json() == {"ok": True}
