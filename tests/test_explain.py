"""``tagsync explain`` (issue 22, point 3): why a fan is (not) in a tag, from what Redis holds
and the bounded per-tag history of each fan's last intent."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import redis
import requests

import producers
from producers.intents import Intent
from tests.helpers import (
    APPID,
    INGEST_TOKEN,
    Sim,
    ensure_fans,
    make_tags,
    tagsync,
    wait_drained,
    wait_until,
)
from worker.pending import PendingStore
from worker.pending.keys import TagKeys
from worker.wechat import WeChatClient


def explained(env: dict[str, str], openid: str, *extra: str) -> dict[int, dict[str, Any]]:
    done = tagsync(env, "explain", "--account", APPID, "--openid", openid, "--json", *extra)
    assert done.returncode == 0, done.stderr
    return {item["tag_id"]: item for item in json.loads(done.stdout)["tags"]}


def test_explain_follows_a_fan_through_every_source_to_the_call_that_applied_it(
    sim: Sim,
    client: WeChatClient,
    queue: redis.Redis,
    start_worker: Any,
    worker_env: dict[str, str],
    ingest_url: str,
    tmp_path: Path,
) -> None:
    """Intents from the Python API, a JSON lines file and HTTP: explain names each one's
    source and event time, and the call that applied it (the id in the worker's log)."""
    by_python, by_jsonl, by_http = make_tags(client, 3, "explain")
    fan, other = ensure_fans(sim, 2)
    worker = start_worker(processes=2, threads=2)
    # When: three sources, and a later untag that wins over a tag for one tag
    producers.tag(by_python, [fan, other], account=APPID, ts=100.0)
    producers.untag(by_python, [fan], account=APPID, ts=200.0)
    lines = tmp_path / "intents.jsonl"
    row = {"op": "tag", "tag_id": by_jsonl, "openid": fan, "account": APPID, "ts": 300.0}
    lines.write_text(json.dumps(row) + "\n")
    assert tagsync(worker_env, "produce", str(lines)).returncode == 0
    answer = requests.post(
        f"{ingest_url}/v1/intents",
        json={"intents": [{"op": "tag", "tag_id": by_http, "openid": fan, "account": APPID}]},
        headers={"Authorization": f"Bearer {INGEST_TOKEN}"},
        timeout=10,
    )
    assert answer.status_code == 202, answer.text
    wait_drained(queue)
    # Then
    found = explained(worker_env, fan)
    assert {t: found[t]["last"]["source"] for t in (by_python, by_jsonl, by_http)} == {
        by_python: "python",
        by_jsonl: "jsonl",
        by_http: "http",
    }
    assert found[by_python]["last"]["op"] == "untag" and found[by_python]["last"]["ts"] == 200.0
    assert all(found[t]["state"] == "applied" for t in (by_python, by_jsonl, by_http))
    call = found[by_jsonl]["applied"]["call"]
    assert found[by_jsonl]["applied"]["op"] == "tag" and found[by_jsonl]["applied"]["ts"] == 300.0
    assert f'"call": "{call}"' in worker.logs()  # the batch log line names the same call
    assert "(not in the tag)" in found[by_python]["verdict"]
    # --check asks WeChat, which agrees
    plain = tagsync(worker_env, "explain", "--account", APPID, "--openid", fan, "--check")
    assert plain.returncode == 0, plain.stderr
    assert f"tag {by_jsonl}: tag applied at" in plain.stdout
    assert f"by call {call}" in plain.stdout and "WeChat: in the tag" in plain.stdout
    assert sorted([by_jsonl, by_http]) == sorted(
        json.loads(
            tagsync(
                worker_env, "explain", "--account", APPID, "--openid", fan, "--check", "--json"
            ).stdout
        )["wechat_tags"]
    )


def test_explain_tells_pending_held_and_dead_lettered_apart(
    sim: Sim,
    client: WeChatClient,
    queue: redis.Redis,
    start_worker: Any,
    worker_env: dict[str, str],
) -> None:
    """A held tag's intent is pending and held (by whom, why); a fan WeChat refuses is
    dead-lettered (the reason and errcode); a fan never seen has no story."""
    held, refused = make_tags(client, 2, "story")
    (fan,) = ensure_fans(sim, 1)
    (stranger,) = sim.foreign(1)  # an openid of another account: 49003
    start_worker(processes=2, threads=2)
    tagsync(worker_env, "pause", "--account", APPID, "--tag", str(held), "--reason", "audit")
    producers.tag(held, [fan], account=APPID)
    producers.tag(refused, [stranger], account=APPID)
    wait_until(
        lambda: (
            explained(worker_env, stranger, "--tag", str(refused))[refused]["state"]
            == "dead_lettered"
        ),
        timeout_s=30,
        what="the refused fan dead-lettered",
        poll_s=0.5,
    )
    story = explained(worker_env, stranger, "--tag", str(refused))[refused]
    assert story["dead_letter"]["errcode"] == 49003 and "49003" in story["verdict"]
    mine = explained(worker_env, fan, "--tag", str(held))[held]
    assert mine["state"] == "held" and "audit" in mine["verdict"] and mine["pending"]["tag"] > 0
    nobody = explained(worker_env, "o" + "x" * 27, "--tag", str(held))[held]
    assert nobody["state"] == "none" and nobody["last"] is None
    tagsync(worker_env, "resume", "--account", APPID, "--tag", str(held))
    wait_drained(queue)
    assert explained(worker_env, fan, "--tag", str(held))[held]["state"] == "applied"
    bad = tagsync(worker_env, "explain", "--account", APPID, "--openid", "no such\nfan")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr


def test_the_history_is_bounded_by_time_and_expires_with_its_tag(
    redis_client: redis.Redis,
) -> None:
    """Entries older than TAGSYNC_HISTORY_HOURS go at the tag's next intents; the keys carry
    the same TTL (an idle tag's history vanishes); 0 keeps none."""
    store = PendingStore(redis_client, history_s=1.0)
    keys = TagKeys(APPID, 7)

    def intent(openid: str) -> Intent:
        return Intent("tag", 7, openid, time.time(), APPID)

    store.ingest([intent("o-first"), intent("o-second")])
    assert redis_client.hlen(keys.key("history")) == 2
    assert 0 < redis_client.pttl(keys.key("history")) <= 1000
    assert 0 < redis_client.pttl(keys.key("history_at")) <= 1000
    time.sleep(1.1)
    store.ingest([intent("o-third")])  # the two older entries are pruned now
    assert redis_client.hkeys(keys.key("history")) == [b"o-third"]
    assert redis_client.zrange(keys.key("history_at"), 0, -1) == [b"o-third"]
    # Off: nothing is kept
    off = PendingStore(redis_client, history_s=0)
    other = TagKeys(APPID, 8)
    off.ingest([Intent("tag", 8, "o-x", time.time(), APPID)])
    assert not redis_client.exists(other.key("history"), other.key("history_at"))
