"""Tags by name, end to end: producers name a tag, real workers resolve it against the
simulator (create on, create off, a rename mid-run, a concurrent create, 45056 at 100 tags)."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import redis
import requests

import producers
from tests.helpers import (
    APPID,
    INGEST_TOKEN,
    Sim,
    ensure_fans,
    fans_of,
    tagsync,
    wait_drained,
    wait_until,
)
from worker.dead_letters import DeadLetters
from worker.runtime.redis_server import RedisServer
from worker.tag_names import TagNames
from worker.wechat.client import WeChatClient


def tag_ids(sim: Sim) -> dict[str, int]:
    """The simulator's tags by name."""
    return {t["name"]: int(i) for i, t in sim.state()["tags"].items()}


def letters(connection: redis.Redis) -> list[Any]:
    return [letter for _, letter in DeadLetters(connection).scan()]


def test_producer_checks_tag_names() -> None:
    """A tag name is 1 to 30 UTF-8 bytes; tag_id and tag together are refused."""
    # Given / When / Then: each bad intent names the field at fault
    with pytest.raises(producers.InvalidIntent, match=r"^intent 0: tag: "):
        producers.send([{"op": "tag", "tag": "标签" * 6, "openid": "o1", "account": APPID}])
    with pytest.raises(producers.InvalidIntent, match="not both"):
        producers.send([{"op": "tag", "tag": "VIP", "tag_id": 5, "openid": "o1", "account": APPID}])
    with pytest.raises(producers.InvalidIntent, match="tag_id: missing"):
        producers.send([{"op": "tag", "openid": "o1", "account": APPID}])


def test_names_from_every_producer_path_create_one_tag(
    sim: Sim, queue: redis.Redis, env: dict[str, str], ingest_url: str, start_worker: Any
) -> None:
    """With TAGSYNC_CREATE_TAGS=1, intents naming a new tag from Python, JSON lines and
    HTTP create it once (several processes racing) and are all applied to it."""
    # Given fans and workers (3 processes) that create missing tags, at a tight rate
    fans = ensure_fans(sim, 300)
    start_worker(processes=3, threads=4, TAGSYNC_CREATE_TAGS="1", TAGSYNC_RATE="20")
    # When the three producer paths name "VIP" (and one intent numbers nothing else)
    producers.tag("VIP", fans[:100], account=APPID)
    lines = "".join(
        json.dumps({"op": "tag", "tag": "VIP", "openid": o, "account": APPID}) + "\n"
        for o in fans[100:200]
    )
    produced = tagsync(env, "produce", "-", input_text=lines)
    assert produced.returncode == 0, produced.stderr
    response = requests.post(
        f"{ingest_url}/v1/intents",
        json={"intents": [{"op": "tag", "tag": "VIP", "openid": o} for o in fans[200:300]]},
        headers={"Authorization": f"Bearer {INGEST_TOKEN}"},
        timeout=10,
    )
    assert response.status_code == 202, response.text
    wait_until(lambda: "VIP" in tag_ids(sim), timeout_s=60, what="VIP created")
    wait_until(
        lambda: len(fans_of(sim, tag_ids(sim)["VIP"])) == 300, timeout_s=90, what="300 tagged"
    )
    wait_drained(queue, timeout_s=60)
    # Then one tag "VIP" exists, made by one tags/create, with all 300 fans and no dead letter
    assert list(tag_ids(sim)) == ["VIP"]
    assert sim.stats()["calls"].get("tags/create") == 1
    assert fans_of(sim, tag_ids(sim)["VIP"]) == set(fans)
    assert letters(queue) == []


def test_unknown_names_are_dead_lettered_without_create_and_replay_after(
    sim: Sim, queue: redis.Redis, env: dict[str, str], start_worker: Any
) -> None:
    """Without TAGSYNC_CREATE_TAGS an unknown name dead-letters its intents as unknown_tag
    (with the name); once an operator creates the tag, a replay applies them."""
    # Given workers that do not create tags
    fans = ensure_fans(sim, 60)
    start_worker(processes=2, threads=4)
    # When intents name a tag that does not exist
    producers.tag("Newsletter", fans, account=APPID)
    wait_until(lambda: len(letters(queue)) == 60, timeout_s=60, what="60 dead letters")
    # Then each is dead-lettered once as unknown_tag, naming the tag; no tag was created
    found = letters(queue)
    assert {(d.reason, d.tag_name, d.tag_id) for d in found} == {("unknown_tag", "Newsletter", -1)}
    assert tag_ids(sim) == {} and "tags/create" not in sim.stats()["calls"]
    listed = tagsync(env, "dlq", "list", "--json")
    assert {json.loads(line)["tag_name"] for line in listed.stdout.splitlines()} == {"Newsletter"}
    # When the operator creates it and replays the dead letters
    created = tagsync(env, "tags", "create", "Newsletter")
    assert created.returncode == 0, created.stderr
    replayed = tagsync(env, "dlq", "replay")
    assert replayed.returncode == 0, replayed.stderr
    wait_drained(queue, timeout_s=60)
    # Then they are applied to the new tag
    assert fans_of(sim, tag_ids(sim)["Newsletter"]) == set(fans)
    assert letters(queue) == []


def test_a_renamed_tag_keeps_its_intents(
    sim: Sim, queue: redis.Redis, env: dict[str, str], client: WeChatClient, start_worker: Any
) -> None:
    """Renaming a tag mid-run: intents that named the old name go to the same tag, intents
    naming the new name find it, nothing is created or dead-lettered (create on)."""
    # Given tag "VIP" and a slow worker (5 calls/s) with a backlog naming it
    fans = ensure_fans(sim, 1000)
    vip = client.create_tag("VIP").id
    start_worker(processes=2, threads=4, TAGSYNC_CREATE_TAGS="1", TAGSYNC_RATE="5")
    producers.tag("VIP", fans[:500], account=APPID)
    wait_until(lambda: 0 < len(fans_of(sim, vip)) < 500, timeout_s=30, what="some applied")
    # When the operator renames it and producers switch to the new name
    renamed = tagsync(env, "tags", "rename", str(vip), "Gold")
    assert renamed.returncode == 0, renamed.stderr
    producers.tag("Gold", fans[500:], account=APPID)
    # (intents awaiting their name's resolution travel in resolve messages: wait on WeChat)
    wait_until(lambda: len(fans_of(sim, vip)) == 1000, timeout_s=180, what="1000 fans tagged")
    wait_drained(queue, timeout_s=60)
    # Then every fan carries the one tag, now "Gold"; no other tag, no dead letter
    assert tag_ids(sim) == {"Gold": vip}
    assert fans_of(sim, vip) == set(fans)
    assert letters(queue) == []


def test_a_tag_created_elsewhere_meanwhile_is_found_after_45157(
    sim: Sim, queue: redis.Redis, client: WeChatClient, start_worker: Any
) -> None:
    """A create answered 45157 (the name was taken meanwhile) re-reads the list and uses
    the tag found there."""
    # Given a fresh name cache that lacks "Promo", which exists on WeChat (made elsewhere)
    promo = client.create_tag("Promo").id
    names = TagNames(queue)
    names.store(APPID, [])
    fans = ensure_fans(sim, 20)
    start_worker(processes=1, threads=2, TAGSYNC_CREATE_TAGS="1")
    # When intents name it
    producers.tag("Promo", fans, account=APPID)
    wait_until(lambda: len(fans_of(sim, promo)) == 20, timeout_s=60, what="20 tagged")
    # Then the resolver tried to create it, was refused 45157, and applied them to it
    assert sim.stats()["errcodes"].get("45157") == 1
    assert fans_of(sim, promo) == set(fans)
    assert letters(queue) == []


def test_the_hundred_and_first_tag_dead_letters_as_tag_limit(
    sim: Sim, queue: redis.Redis, client: WeChatClient, start_worker: Any
) -> None:
    """At WeChat's 100 tags, intents naming a new tag are dead-lettered as tag_limit (45056)."""
    # Given an account with 100 tags and workers that create tags
    for i in range(100):
        client.create_tag(f"t{i}")
    fans = ensure_fans(sim, 10)
    start_worker(processes=2, threads=4, TAGSYNC_CREATE_TAGS="1")
    # When intents name a 101st
    producers.tag("OneTooMany", fans, account=APPID)
    wait_until(lambda: len(letters(queue)) == 10, timeout_s=60, what="10 dead letters")
    # Then each is dead-lettered once with tag_limit and 45056; nothing else was created
    assert {(d.reason, d.errcode, d.tag_name) for d in letters(queue)} == {
        ("tag_limit", 45056, "OneTooMany")
    }
    assert len(tag_ids(sim)) == 100


def test_names_resolve_across_a_redis_restart(
    sim: Sim, durable_redis: RedisServer, start_worker: Any
) -> None:
    """Redis kill -9 while three processes resolve and create three new tags for a burst
    naming them, back from its AOF: each tag exists once, every intent lands."""
    # Given workers (3 processes, 20 calls/s) creating tags, on a Redis that will crash
    connection = redis.Redis.from_url(durable_redis.url)
    producers.configure(redis_url=durable_redis.url)
    try:
        fans = ensure_fans(sim, 600)
        start_worker(
            processes=3, threads=4, TAGSYNC_CREATE_TAGS="1", TAGSYNC_RATE="20",
            TAGSYNC_REDIS_URL=durable_redis.url,
        )  # fmt: skip
        names = ["R0", "R1", "R2"]
        for i, name in enumerate(names):
            for start in range(0, 200, 20):  # many messages naming each tag
                producers.tag(name, fans[i * 200 + start : i * 200 + start + 20], account=APPID)
        # When Redis dies as the names are being resolved, and comes back 2 s later
        wait_until(lambda: "tags/get" in sim.stats()["calls"], timeout_s=30, what="resolving")
        durable_redis.kill()
        time.sleep(2)
        durable_redis.start()
        # Then each name is one tag, carrying its 200 fans, and nothing is dead-lettered
        wait_until(
            lambda: (
                sorted(tag_ids(sim)) == names
                and all(len(fans_of(sim, tag_ids(sim)[n])) == 200 for n in names)
            ),
            timeout_s=120,
            what="600 fans on 3 tags",
        )
        ids = tag_ids(sim)
        for i, name in enumerate(names):
            assert fans_of(sim, ids[name]) == set(fans[i * 200 : (i + 1) * 200])
        wait_drained(connection, timeout_s=60)
        assert letters(connection) == []
    finally:
        producers.configure(None)
        connection.close()
