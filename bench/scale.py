"""Scenario `scale`: the state on one Redis Cluster primary against three, at the same load.

A backlog of full batches over 20 tags (a fan carries at most 20) drains at a fixed rate
the host can carry (the gate's, the same in both runs), the queue on a Redis of its own:
calls/s, and the Redis CPU of each primary per call. On these 2 cores the total cannot
rise (the workers, the simulator and every Redis share them); what a cluster buys is that
no one Redis core carries all the state: each primary's CPU per call falls about 3x. The
account's gate keys (one slot, ``{account}``) stay on one primary, which carries more
than the others; many accounts spread those too.
"""

from __future__ import annotations

from typing import Any

import producers
from bench.harness import ACCOUNT, redis_cpu_s, stack, wait_for
from bench.pipeline import _make_tags

TAGS = 20
#: Calls per second both runs are held to: below what the host drives flat out.
RATE = 150


def _run(primaries: int, per_tag: int) -> dict[str, Any]:
    with stack(
        fans=10_000,
        workers=False,
        cluster=primaries,
        TAGSYNC_RATE=str(RATE),
        TAGSYNC_LINGER_MS="200",
    ) as s:
        tags = _make_tags(s, TAGS)
        fans = s.fans(per_tag)
        s.pause()
        for tag in tags:
            producers.tag(tag, fans, account=ACCOUNT)
        s.start_workers(processes=2, threads=8)
        wait_for(lambda: s.pending() >= per_tag * TAGS, timeout_s=300, what="backlog ingested")
        before = [redis_cpu_s(node) for node in s.primaries]
        queue_before = redis_cpu_s(s.queue_redis)
        s.resume()
        # Looked at seldom: each look is a pipeline over every tag's keys on the primaries.
        wait_for(lambda: s.pending() == 0, timeout_s=600, what="backlog flushed", poll_s=0.5)
        cpu = [redis_cpu_s(node) - was for node, was in zip(s.primaries, before, strict=True)]
        queue_cpu = redis_cpu_s(s.queue_redis) - queue_before
        made = s.batch_calls()
        calls, stats = made["calls"], made["stats"]
    span = max(stats["last_batch_at"] - stats["first_batch_at"], 1e-6)
    per_node = sorted((round(1000 * c / calls, 3) for c in cpu), reverse=True)
    return {
        "primaries": primaries,
        "calls": calls,
        "calls_per_s": round((calls - 1) / span, 1),
        # Each primary's Redis CPU per call, busiest first (the gate's primary leads).
        "state_cpu_ms_per_call_per_primary": per_node,
        "state_cpu_ms_per_call_total": round(sum(per_node), 3),
        "queue_cpu_ms_per_call": round(1000 * queue_cpu / calls, 3),
    }


def run(*, quick: bool = False) -> dict[str, Any]:
    """One primary, then three, on the same backlog at the same rate."""
    per_tag = 500 if quick else 2_000
    one, three = _run(1, per_tag), _run(3, per_tag)
    busiest = three["state_cpu_ms_per_call_per_primary"][0]
    mean = three["state_cpu_ms_per_call_total"] / 3
    alone = one["state_cpu_ms_per_call_per_primary"][0]
    return {
        "intents_per_run": per_tag * TAGS,
        "rate": RATE,
        "runs": [one, three],
        # How much less CPU per call the busiest (and the average) primary spends with three.
        "busiest_primary_falls_x": round(alone / busiest, 2) if busiest else None,
        "average_primary_falls_x": round(alone / mean, 2) if mean else None,
        "calls_per_s_ratio": round(three["calls_per_s"] / one["calls_per_s"], 3),
        "target": "each primary's CPU per call falls ~3x; calls/s the same (2 cores)",
        "met": bool(busiest) and alone / busiest >= 2.0,
    }
