"""Scenario `capacity`: how many WeChat calls per second one worker process drives, and the
CPU each call costs, so docs/deploying.md can size processes and threads against an account's rate.

The gate is set far above what the host can do (TAGSYNC_RATE=2000) and the simulator does not
limit, so the workers run flat out on a backlog of full batches; the simulator shares the
host's 2 cores, so calls/s here are a floor, and CPU per call (the workers' own, from /proc)
is the figure that carries to another host.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import producers
from bench.harness import ACCOUNT, process_cpu_s, redis_cpu_s, stack, wait_for
from bench.pipeline import _make_tags

TAGS = 20
#: (processes, threads) tried, in this order.
SHAPES = ((1, 4), (1, 8), (2, 8))
#: Then with WeChat answering in 100-200 ms (as from a host far from its servers): threads
#: bound the rate, each carrying about one call per answer time. Fewer threads than the 20
#: tags: a tag's calls go one at a time, so tags bound it too once threads outnumber them.
SLOW_SHAPES = ((1, 4), (1, 8))
SLOW_MS = (100, 200)


def _run(
    processes: int, threads: int, per_tag: int, latency_ms: tuple[int, int] = (0, 0)
) -> dict[str, Any]:
    with stack(
        fans=10_000,
        processes=processes,
        threads=threads,
        workers=False,
        TAGSYNC_RATE="2000",
        TAGSYNC_LINGER_MS="200",
    ) as s:
        tags = _make_tags(s, TAGS)
        fans = s.fans(per_tag)
        s.pause()
        for tag in tags:
            producers.tag(tag, fans, account=ACCOUNT)
        group = s.start_workers(processes=processes, threads=threads)
        wait_for(lambda: s.pending() >= per_tag * TAGS, timeout_s=300, what="backlog ingested")
        pids = group.children()
        s.sim_post("/_sim/config", {"latency_ms": list(latency_ms)})
        cpu_before = process_cpu_s(pids)
        redis_before = redis_cpu_s(s.redis)
        started = time.monotonic()
        s.resume()
        wait_for(lambda: s.pending() == 0, timeout_s=600, what="backlog flushed", poll_s=0.02)
        wall = time.monotonic() - started
        cpu = process_cpu_s(pids) - cpu_before
        redis_cpu = redis_cpu_s(s.redis) - redis_before
        calls = s.batch_calls()
    stats = calls["stats"]
    span = max(stats["last_batch_at"] - stats["first_batch_at"], 1e-6)
    return {
        "processes": processes,
        "threads": threads,
        "wechat_latency_ms": list(latency_ms),
        "calls": calls["calls"],
        "calls_per_s": round((calls["calls"] - 1) / span, 1),
        "worker_cpu_ms_per_call": round(1000 * cpu / calls["calls"], 2),
        # Redis's CPU over the run: the flushes' scripts and dramatiq's messages.
        "redis_cpu_ms_per_call": round(1000 * redis_cpu / calls["calls"], 3),
        "wall_s": round(wall, 2),
    }


def run(*, quick: bool = False) -> dict[str, Any]:
    """Each shape on the same backlog: calls/s and worker CPU per call."""
    # 4,000 calls a shape: at 1,000, a shape's CPU per call varied by 15% between runs.
    per_tag = 500 if quick else 10_000
    shapes = SHAPES[-1:] if quick else SHAPES
    runs = [_run(p, t, per_tag) for p, t in shapes]
    slow = [] if quick else [_run(p, t, 1_000, SLOW_MS) for p, t in SLOW_SHAPES]
    best = max(runs, key=lambda r: r["calls_per_s"])
    cpu = sorted(r["worker_cpu_ms_per_call"] for r in runs)[len(runs) // 2]
    redis_cpu = sorted(r["redis_cpu_ms_per_call"] for r in runs)[len(runs) // 2]
    return {
        "intents_per_run": per_tag * TAGS,
        "runs": runs,
        "best_calls_per_s": best["calls_per_s"],
        "median_worker_cpu_ms_per_call": cpu,
        "median_redis_cpu_ms_per_call": redis_cpu,
        # One core's worth of calls at that cost: the most one process can drive.
        "calls_per_s_per_core": round(1000 / cpu) if cpu else None,
        "slow_wechat_runs": slow,
        # Calls/s each thread carries when WeChat answers in 150 ms on average.
        "slow_calls_per_s_per_thread": (
            round(statistics.median(r["calls_per_s"] / r["threads"] for r in slow), 2)
            if slow
            else None
        ),
        "target": "informational (docs/deploying.md, Sizing)",
        "met": True,
    }
