"""Fixtures with real parts: a redis-server process and the simulator over HTTP.

Both are started once per session on free ports and stopped at the end; each test gets
them emptied (FLUSHALL, ``/_sim/reset``) so tests do not see each other's state. The
helpers the tests share are in ``helpers.py``.
"""

from __future__ import annotations

import inspect
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from tests.helpers import APPID, FANS, INGEST_TOKEN, SECRET, Sim, start_simulator
from worker.runtime.launch import WorkerGroup as Worker
from worker.runtime.processes import stop_process
from worker.runtime.redis_server import LocalCluster, RedisServer
from worker.wechat.client import WeChatClient
from worker.wechat.tokens import RedisTokenStore


def pytest_configure(config: pytest.Config) -> None:
    """Commands the tests start hear the Ctrl-C (SIGINT) the tests send them.

    A shell starts a background job (``make test &``, ``nohup``) with SIGINT ignored, and an
    ignored signal stays ignored through fork and exec: every command started here would be
    deaf to it. A handled one is reset to the default in the child, so handle it here.
    """
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A real redis-server process for the whole session."""
    with RedisServer() as server:
        yield server


@pytest.fixture
def durable_redis() -> Iterator[RedisServer]:
    """A Redis of its own with `appendonly yes` and `appendfsync always`, to kill and restart."""
    server = RedisServer(appendonly=True, appendfsync="always").start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def cluster_nodes() -> Iterator[LocalCluster]:
    """A Redis Cluster of three primaries on loopback, started at its first use."""
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
def redis_url(redis_server: RedisServer) -> str:
    """The URL of an emptied Redis."""
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    return redis_server.url


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    """A client of an emptied Redis."""
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture(scope="session")
def simulator_process() -> Iterator[str]:
    """The simulator as a separate process, over real HTTP, for the whole session."""
    process, url = start_simulator("--fans", str(FANS))
    yield url
    stop_process(process)


@pytest.fixture
def sim(simulator_process: str) -> Iterator[Sim]:
    """The simulator, reset (no tags, tokens, stats or faults; fans stay)."""
    helper = Sim(simulator_process)
    helper.post("/_sim/reset")
    yield helper
    # G2 (docs/how-it-works.md) in every test: two batch calls of one tag are never answered
    # at the same time.
    overlapping = helper.stats()["overlapping_batches"]
    helper.http.close()
    assert overlapping == 0, f"{overlapping} batch calls overlapped another of their tag"


@pytest.fixture
def client(sim: Sim, redis_client: redis.Redis) -> Iterator[WeChatClient]:
    """A client of the simulator sharing its token through Redis."""
    with WeChatClient(
        appid=APPID,
        secret=SECRET,
        api_base=sim.url,
        token_store=RedisTokenStore(redis_client, APPID),
        read_timeout=2.0,
    ) as wechat:
        yield wechat


@pytest.fixture
def env(sim: Sim, redis_url: str) -> dict[str, str]:
    """An environment for ``tagsync`` commands pointed at the simulator and Redis."""
    return {
        **os.environ,
        "WECHAT_APPID": APPID,
        "WECHAT_SECRET": SECRET,
        "WECHAT_API_BASE": sim.url,
        "TAGSYNC_REDIS_URL": redis_url,
        "TAGSYNC_LOG_FORMAT": "json",
    }


@pytest.fixture
def worker_env(env: dict[str, str]) -> dict[str, str]:
    """The environment of a test worker: short linger, quick backoff, short timeouts."""
    return {
        **env,
        "TAGSYNC_LINGER_MS": "100",
        "TAGSYNC_BACKOFF_MIN_MS": "50",
        "TAGSYNC_BACKOFF_MAX_MS": "500",
        "TAGSYNC_WECHAT_TIMEOUT_S": "2",
        "TAGSYNC_RATE": "1000",  # tests of the rate limit set their own
    }


@pytest.fixture
def start_worker(worker_env: dict[str, str]) -> Iterator[Any]:
    """Start worker process groups (stopped at teardown): ``start_worker(processes=2)``."""
    started: list[Worker] = []

    def start(*, processes: int = 2, threads: int = 4, **env: str) -> Worker:
        from worker.runtime.processes import free_port

        settings = {"TAGSYNC_METRICS_PORT": str(free_port()), "TAGSYNC_METRICS_HOST": "127.0.0.1"}
        worker = Worker({**worker_env, **settings, **env}, processes=processes, threads=threads)
        started.append(worker)
        return worker.wait_ready()

    yield start
    for worker in started:
        worker.stop()


@pytest.fixture
def queue(redis_url: str) -> Iterator[redis.Redis]:
    """Producers pointed at the test Redis; yields a client of it to look at the queue."""
    import producers

    producers.configure(redis_url=redis_url)
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()
    producers.configure(None)


@pytest.fixture
def ingest_url(env: dict[str, str]) -> Iterator[str]:
    """`tagsync ingest` on a free port (bearer token ``INGEST_TOKEN``)."""
    from worker.runtime.processes import free_port

    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "worker", "ingest", "--port", str(port)],
        env={**env, "TAGSYNC_INGEST_TOKEN": INGEST_TOKEN},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    assert "listening" in line, line
    yield f"http://127.0.0.1:{port}"
    stop_process(process)


#: Fixtures that start processes of a test's own (worker groups, an ingest server).
PROCESS_FIXTURES = frozenset({"start_worker", "ingest_url"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark ``processes`` every test that starts processes of its own: through a fixture,
    or a ``tagsync`` command or subprocess in its body (``make test-fast`` leaves them out)."""
    for item in items:
        function = getattr(item, "function", None)
        source = inspect.getsource(function) if function is not None else ""
        spawns = "tagsync(" in source or "subprocess." in source or "Popen" in source
        if spawns or PROCESS_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.processes)
