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
from tests.helpers import APPID, Sim, fans_of, make_tags, tagsync, wait_drained
from worker.pending import PendingStore
from worker.runtime.redis_server import LocalCluster
from worker.wechat.client import WeChatClient


@pytest.fixture(scope="module")
def cluster_nodes() -> Iterator[LocalCluster]:
    """Three primaries, no replicas, for this module."""
    with LocalCluster(3) as cluster:
        yield cluster


@pytest.fixture
def cluster(cluster_nodes: LocalCluster) -> LocalCluster:
    """The cluster, every node emptied."""
    for server in cluster_nodes.servers:
        node = cluster_nodes.client(server)
        node.flushall()
        node.close()
    return cluster_nodes


@pytest.fixture
def state(cluster: LocalCluster) -> Iterator[redis.Redis]:
    """A cluster client of the state."""
    client = connect(cluster.url)
    yield client
    client.close()


@pytest.fixture
def cluster_env(
    cluster: LocalCluster, worker_env: dict[str, str], redis_url: str
) -> Iterator[dict[str, str]]:
    """A worker's environment with the state on the cluster and the queue on plain Redis;
    the producers pointed at that queue."""
    producers.configure(redis_url=redis_url)
    yield {**worker_env, "TAGSYNC_REDIS_URL": cluster.url, "TAGSYNC_QUEUE_URL": redis_url}
    producers.configure(None)


def test_intents_reach_wechat_with_the_state_spread_over_three_primaries(
    sim: Sim,
    client: WeChatClient,
    cluster: LocalCluster,
    state: redis.Redis,
    redis_client: redis.Redis,
    cluster_env: dict[str, str],
    start_worker: Any,
) -> None:
    """Tags, untags and last write wins as on one Redis; every primary holds some of the
    state (one tag's keys share a slot, tags spread); status scatters its reads."""
    # Given: two worker processes on the cluster, six tags
    start_worker(processes=2, threads=4, **cluster_env)
    tags = make_tags(client, 6, "cluster")
    fans = sim.fans(200)
    # When
    for tag_id in tags:
        producers.tag(tag_id, fans, account=APPID, ts=time.time())
        producers.untag(tag_id, fans[:30], account=APPID, ts=time.time() + 1)
    wait_drained(state, queue=redis_client)
    # Then
    assert all(fans_of(sim, tag_id) == set(fans[30:]) for tag_id in tags)
    sizes = [cluster.client(server).dbsize() for server in cluster.servers]
    assert all(size > 0 for size in sizes), sizes
    report = json.loads(tagsync(cluster_env, "status", "--json").stdout)
    assert {row["tag_id"] for row in report["tags"]} == set(tags)
    assert report["totals"]["pending"] == 0 and report["totals"]["queued_messages"] == 0
    assert not PendingStore(state).status() or all(
        t.unsettled == 0 for t in PendingStore(state).status()
    )


def test_a_cluster_as_the_queue_is_refused_in_one_line(
    cluster: LocalCluster, env: dict[str, str]
) -> None:
    """dramatiq's queue is not slot-aware: a cluster URL without TAGSYNC_QUEUE_URL (or as
    it) is refused at start, naming the variable to set."""
    for extra in ({}, {"TAGSYNC_QUEUE_URL": cluster.url}):
        done = tagsync({**env, "TAGSYNC_REDIS_URL": cluster.url, **extra}, "worker")
        assert done.returncode == 2, done.stderr
        assert "Traceback" not in done.stderr
        assert "set TAGSYNC_QUEUE_URL to a plain or Sentinel Redis" in done.stderr
