"""The state on a Redis Cluster (``TAGSYNC_REDIS_URL=redis+cluster://...``), the queue on a
plain Redis (``TAGSYNC_QUEUE_URL``): three primaries started by the fixtures on loopback,
real worker processes, the simulator over HTTP."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

import producers
from producers.redis_url import connect
from tests.helpers import APPID, Sim, fans_of, make_tags, tagsync, wait_drained, wait_until
from tests.test_cli import run_demo
from tests.test_redis_ha import Application, lost_pairs, pairs_of
from worker.pending import PendingStore
from worker.pending.keys import TagKeys
from worker.runtime.redis_server import LocalCluster
from worker.wechat.client import WeChatClient


@pytest.fixture
def state(cluster: LocalCluster) -> Iterator[redis.Redis]:
    """A cluster client of the state."""
    client = connect(cluster.url)
    yield client
    client.close()


@pytest.fixture
def cluster_env(
    cluster: LocalCluster, worker_env: dict[str, str], queue: redis.Redis, redis_url: str
) -> dict[str, str]:
    """A worker's environment with the state on the cluster and the queue on plain Redis
    (the producers' too: the ``queue`` fixture)."""
    return {**worker_env, "TAGSYNC_REDIS_URL": cluster.url, "TAGSYNC_QUEUE_URL": redis_url}


def test_intents_reach_wechat_with_the_state_spread_over_three_primaries(
    sim: Sim,
    client: WeChatClient,
    cluster: LocalCluster,
    state: redis.Redis,
    redis_client: redis.Redis,
    cluster_env: dict[str, str],
    start_worker: Any,
) -> None:
    """Tags, untags and last write wins as on one Redis; a refused openid dead-lettered
    alone; every primary holds some of the state (one tag's keys share a slot, tags
    spread); status and the dead-letter listing scatter their reads."""
    # Given: two worker processes on the cluster, six tags, a fan of another account
    start_worker(processes=2, threads=4, **cluster_env)
    tags = make_tags(client, 6, "cluster")
    fans = sim.fans(200)
    (stranger,) = sim.foreign(1)
    # When
    for tag_id in tags:
        producers.tag(tag_id, fans, account=APPID, ts=time.time())
        producers.untag(tag_id, fans[:30], account=APPID, ts=time.time() + 1)
    producers.tag(tags[0], [stranger], account=APPID)
    wait_drained(state, queue=redis_client)
    # Then
    assert all(fans_of(sim, tag_id) == set(fans[30:]) for tag_id in tags)
    listed = tagsync(cluster_env, "dlq", "list", "--json").stdout.splitlines()
    assert [(d["openid"], d["tag_id"]) for d in map(json.loads, listed)] == [(stranger, tags[0])]
    sizes = [cluster.client(server).dbsize() for server in cluster.servers]
    assert all(size > 0 for size in sizes), sizes
    report = json.loads(tagsync(cluster_env, "status", "--json").stdout)
    assert {row["tag_id"] for row in report["tags"]} == set(tags)
    assert report["totals"]["pending"] == 0 and report["totals"]["queued_messages"] == 0
    assert report["totals"]["dead_letters"] == 1
    assert all(t.unsettled == 0 for t in PendingStore(state).status())


def test_a_cluster_as_the_queue_or_a_malformed_cluster_url_is_refused_in_one_line(
    cluster: LocalCluster, env: dict[str, str]
) -> None:
    """dramatiq's queue is not slot-aware: a cluster URL without TAGSYNC_QUEUE_URL (or as
    it) is refused at start, naming the variable to set; a db or a bad port in a cluster
    URL is named."""
    for extra in ({}, {"TAGSYNC_QUEUE_URL": cluster.url}):
        done = tagsync({**env, "TAGSYNC_REDIS_URL": cluster.url, **extra}, "worker")
        assert done.returncode == 2, done.stderr
        assert "Traceback" not in done.stderr
        assert "set TAGSYNC_QUEUE_URL to a plain or Sentinel Redis" in done.stderr
    # A cluster has no db; a node needs a port that is a number
    for url, says in (("redis+cluster://127.0.0.1:7000/1", "a cluster has no db"),
                      ("redis+cluster://127.0.0.1:x", "bad node '127.0.0.1:x'")):  # fmt: skip
        done = tagsync(
            {**env, "TAGSYNC_REDIS_URL": url, "TAGSYNC_QUEUE_URL": env["TAGSYNC_REDIS_URL"]},
            "status",
        )
        assert done.returncode == 2 and says in done.stderr, done.stderr
        assert "Traceback" not in done.stderr


@pytest.fixture
def replicated_cluster() -> Iterator[LocalCluster]:
    """Three primaries with a replica each (to kill one primary of)."""
    with LocalCluster(3, replicas=1) as cluster:
        yield cluster


@pytest.mark.long
def test_a_primary_killed_mid_stream_loses_no_accepted_intent_with_wait(
    sim: Sim,
    client: WeChatClient,
    replicated_cluster: LocalCluster,
    queue: redis.Redis,
    redis_url: str,
    worker_env: dict[str, str],
    start_worker: Any,  # after the cluster: its workers stop first at teardown
) -> None:
    """kill -9 of the primary holding a tag's keys while 60 intents/s come in, with
    TAGSYNC_REDIS_WAIT_REPLICAS=1 (ingest waits for the state's replica before its message
    is acked): its replica is promoted, the workers go on unrestarted, every accepted
    intent is applied; the killed node comes back as a replica."""
    # Given
    cluster = replicated_cluster
    tags = make_tags(client, 4, "failover")
    fans = sim.fans(300)
    worker = start_worker(
        processes=2, threads=4, TAGSYNC_REDIS_URL=cluster.url, TAGSYNC_QUEUE_URL=redis_url,
        TAGSYNC_REDIS_WAIT_REPLICAS="1",
    )  # fmt: skip
    pids = worker.children()
    app = Application(pairs_of(tags, fans), per_second=60)
    app.start()
    wait_until(lambda: len(app.accepted) >= 100, what="intents before the fault")
    # When: the primary of the first tag's keys dies
    victim = cluster.primary_of(TagKeys(APPID, tags[0]).key("pending:tag"))
    victim.kill()
    killed_at = time.time()
    wait_until(
        lambda: cluster.primary_of(TagKeys(APPID, tags[0]).key("pending:tag")) is not victim,
        timeout_s=20, what="the replica promoted",
    )  # fmt: skip
    promoted_s = time.time() - killed_at
    victim.start()  # rejoins as the new primary's replica (its nodes.conf is kept)
    wait_until(lambda: len(app.accepted_at) and app.accepted_at[-1] > time.time() - 0.5
               and time.time() > killed_at + promoted_s + 3, what="intents after")  # fmt: skip
    app.finish()
    state = connect(cluster.url)
    wait_drained(state, timeout_s=90, queue=queue)
    # Then
    lost = lost_pairs(sim, app.accepted)
    assert lost == [], f"{len(lost)} accepted intents lost, e.g. {lost[:3]}"
    assert worker.process.poll() is None and worker.children() == pids  # never restarted
    role = cluster.client(victim).info("replication")["role"]
    assert role == "slave", role
    print(f"cluster failover: replica promoted {promoted_s:.2f}s after the kill; "
          f"{len(app.accepted)} intents accepted, all applied")  # fmt: skip
    state.close()


@pytest.mark.long
def test_slots_resharded_while_workers_run_lose_nothing(
    sim: Sim,
    client: WeChatClient,
    cluster: LocalCluster,
    state: redis.Redis,
    queue: redis.Redis,
    cluster_env: dict[str, str],
    start_worker: Any,
) -> None:
    """Two tags' slots and the account's (gate, tokens) move to another primary, a key at
    a time, while 60 intents/s come in and the workers call WeChat at a tight rate: every
    accepted intent is applied, no actor fails (redirections and half-moved slots are
    waited out), the rate holds, nothing is dead-lettered."""
    # Given
    tags = make_tags(client, 4, "reshard")
    fans = sim.fans(300)
    sim.config(rate_per_sec=40)
    worker = start_worker(processes=2, threads=4, **{**cluster_env, "TAGSYNC_RATE": "40"})
    app = Application(pairs_of(tags, fans), per_second=60)
    app.start()
    wait_until(lambda: len(app.accepted) >= 100, what="intents before the move")
    # When: each slot goes to the next primary, 20 ms between keys
    moved = {}
    keys = [TagKeys(APPID, tag_id).key("pending:tag") for tag_id in tags[:2]]
    for key in [*keys, f"tagsync:{{{APPID}}}:rate"]:
        source = cluster.primary_of(key)
        target = cluster.servers[(cluster.servers.index(source) + 1) % len(cluster.servers)]
        moved[key] = cluster.move_slot_of(key, target, pause_s=0.02)
        assert cluster.primary_of(key) is target
    app.finish()
    wait_drained(state, timeout_s=90, queue=queue)
    # Then
    assert all(moved.values()), moved  # each slot held keys to move
    lost = lost_pairs(sim, app.accepted)
    errors = [line[:300] for line in worker.logs().splitlines() if '"level": "error"' in line]
    assert errors == []  # every redirection and half-moved slot waited out, no actor failed
    assert lost == [], f"{len(lost)} accepted intents lost, e.g. {lost[:3]}"
    stats = sim.stats()
    assert "45011" not in stats["errcodes"] and stats["max_calls_in_any_second"] <= 40
    report = json.loads(tagsync(cluster_env, "status", "--json").stdout)
    assert report["totals"]["dead_letters"] == 0


@pytest.mark.long
def test_the_demo_passes_with_its_state_on_a_cluster() -> None:
    """`tagsync demo --cluster 3 --accounts 4`: the state on three embedded primaries, the
    queue on a Redis of its own, one account through the component (its pushes through the
    ingest); each account checked, and PASS."""
    result = run_demo(
        "--cluster", "3", "--duration", "3", "--fans", "300", "--accounts", "4", timeout=240
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "embedded cluster of 3 primaries (state)" in result.stdout
    lines = result.stdout.strip().splitlines()
    assert sum(line.startswith("  ok ") for line in lines) == 4
    assert lines[-1].startswith("PASS:") and "0 wrong" in lines[-1]
