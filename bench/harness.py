"""What every pipeline benchmark needs: a Redis, the simulator, workers, and ways to wait."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

import redis
import requests
from redis import Redis

import producers
from fakewechat import DEFAULT_APPID, DEFAULT_SECRET
from producers.redis_url import connect
from worker.gate import AccountGate
from worker.pending import PendingStore
from worker.runtime.launch import WorkerGroup
from worker.runtime.processes import free_port
from worker.runtime.redis_server import LocalCluster, RedisServer
from worker.sweep import lift_pause
from worker.wechat.client import WeChatClient

#: The account every benchmark works for (the simulator's default).
ACCOUNT = DEFAULT_APPID


@dataclass
class Stack:
    """A running Redis, simulator and worker group."""

    redis: redis.Redis
    redis_url: str
    sim_url: str
    client: WeChatClient
    workers: WorkerGroup | None
    env: dict[str, str]
    metrics_port: int
    #: The simulator's process id (its CPU is part of a call's cost on this host).
    simulator_pid: int = 0
    #: The queue's Redis: ``redis`` itself, or its own with the state on a cluster.
    queue: Redis | None = None
    #: With the state on a cluster, a client of each primary (each one's CPU is measured).
    primaries: list[Redis] = field(default_factory=list)

    @property
    def queue_redis(self) -> Redis:
        return self.queue or self.redis

    def sim_get(self, path: str, **params: Any) -> Any:
        return requests.get(f"{self.sim_url}{path}", params=params, timeout=60).json()

    def sim_post(self, path: str, body: Any) -> Any:
        return requests.post(f"{self.sim_url}{path}", json=body, timeout=60).json()

    def fans(self, count: int) -> list[str]:
        total = int(self.sim_get("/_sim/fans", limit=0)["total"])
        if total < count:
            self.sim_post("/_sim/fans", {"count": count - total})
        return list(self.sim_get("/_sim/fans", limit=count)["openids"])

    def pending(self) -> int:
        """Intents pending or in flight, over every tag."""
        return sum(t.unsettled for t in PendingStore(self.redis).status())

    def queued(self) -> int:
        """Intent messages not yet ingested: in the queue or prefetched by a worker."""
        queue = self.queue_redis
        waiting = int(queue.llen("dramatiq:tagsync.intents"))
        for key in queue.scan_iter("dramatiq:__acks__.*.tagsync.intents"):
            waiting += int(queue.scard(key))
        return waiting

    def start_workers(self, *, processes: int, threads: int) -> WorkerGroup:
        """Start the worker group (for a stack made with ``workers=False``)."""
        assert self.workers is None, "workers already running"
        self.workers = WorkerGroup(self.env, processes=processes, threads=threads).wait_ready()
        return self.workers

    def pause(self) -> None:
        """Pause the account's WeChat calls: intents pile up in the pending buffers."""
        AccountGate(self.redis, rate=1).pause(
            ACCOUNT, reason="bench", errcode=None, until="for", ms=3_600_000
        )

    def resume(self) -> None:
        """Lift the pause and wake the paused tags at once (as `tagsync quota reset` does)."""
        store = PendingStore(self.redis)
        lift_pause(AccountGate(self.redis, rate=1), store, ACCOUNT, self.queue_redis)

    def batch_calls(self) -> dict[str, Any]:
        stats = self.sim_get("/_sim/stats")
        sizes: dict[int, int] = {}
        for kind in ("tagging", "untagging"):
            for size, count in stats["batch_sizes"][kind].items():
                sizes[int(size)] = sizes.get(int(size), 0) + int(count)
        return {"sizes": sizes, "calls": sum(sizes.values()), "stats": stats}


#: Clock ticks a second, the unit of /proc/PID/stat's CPU times.
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def process_cpu_s(pids: list[int]) -> float:
    """User + system CPU of ``pids`` so far, s."""
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rpartition(")")[2].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / CLOCK_TICKS


def redis_cpu_s(connection: Any) -> float:
    """Redis's own CPU so far (user + system), s."""
    cpu = connection.info("cpu")
    return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


def wait_for(
    condition: Callable[[], bool], *, timeout_s: float, what: str, poll_s: float = 0.05
) -> float:
    """Wait until ``condition()``; return the seconds waited (raise on timeout)."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout_s:
            raise TimeoutError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(poll_s)
    return time.monotonic() - started


@contextmanager
def stack(
    *,
    fans: int = 10_000,
    processes: int = 2,
    threads: int = 8,
    workers: bool = True,
    sim_args: tuple[str, ...] = (),
    cluster: int = 0,
    **env: str,
) -> Iterator[Stack]:
    """Start Redis, the simulator and (unless ``workers=False``) a worker group; stop them after.

    ``sim_args`` go to ``fakewechat`` (e.g. ``--app APPID:SECRET`` for more apps); with
    ``cluster=N`` the state lives on a cluster of N primaries, the queue on the Redis."""
    with RedisServer() as server, ExitStack() as nodes:
        state = nodes.enter_context(LocalCluster(cluster)) if cluster else None
        simulator = subprocess.Popen(
            [sys.executable, "-m", "fakewechat", "--port", "0", "--fans", str(fans), *sim_args],
            stdout=subprocess.PIPE,
            text=True,
        )
        group: WorkerGroup | None = None
        made: Stack | None = None
        try:
            assert simulator.stdout is not None
            sim_url = simulator.stdout.readline().split("listening on ")[1].split()[0]
            metrics_port = free_port()
            full_env = {
                **{
                    k: v for k, v in os.environ.items() if not k.startswith(("TAGSYNC_", "WECHAT_"))
                },
                "TAGSYNC_REDIS_URL": state.url if state else server.url,
                "TAGSYNC_QUEUE_URL": server.url,
                "WECHAT_APPID": ACCOUNT,
                "WECHAT_SECRET": DEFAULT_SECRET,
                "WECHAT_API_BASE": sim_url,
                "TAGSYNC_LOG_FORMAT": "json",
                "TAGSYNC_METRICS_PORT": str(metrics_port),
                "TAGSYNC_METRICS_HOST": "127.0.0.1",
                **env,
            }
            connection = connect(state.url) if state else redis.Redis.from_url(server.url)
            producers.configure(redis_url=server.url)
            if workers:
                group = WorkerGroup(full_env, processes=processes, threads=threads).wait_ready()
            client = WeChatClient(appid=ACCOUNT, secret=DEFAULT_SECRET, api_base=sim_url)
            made = Stack(
                connection,
                server.url,
                sim_url,
                client,
                group,
                full_env,
                metrics_port,
                simulator.pid,
                queue=redis.Redis.from_url(server.url) if state else None,
                primaries=[state.client(s) for s in state.servers] if state else [],
            )
            yield made
        finally:
            producers.configure(None)
            if made is not None:
                group = made.workers
            if group is not None:
                keep = os.environ.get("BENCH_KEEP_LOGS")
                if keep:
                    with open(os.path.join(keep, f"worker-{time.time():.0f}.log"), "w") as log:
                        log.write(group.logs())
                group.stop()
            simulator.terminate()
            simulator.wait(timeout=10)
            if simulator.stdout:
                simulator.stdout.close()
