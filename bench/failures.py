"""Scenarios `bad_openids` and `backlog_fill`: the failure policy under a tight rate."""

from __future__ import annotations

import json
import math
import random
import statistics
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import producers
from bench.harness import ACCOUNT, Stack, stack, wait_for
from worker.dead_letters import DeadLetters
from worker.split import MAX_CALLS
from worker.wechat.client import MAX_BATCH


def halving_bound(k: int) -> int:
    """Calls in all that k bad openids in a batch of 50 may cost (G7, docs/how-it-works.md):
    halving's, k <= 5."""
    if k > 5:
        return MAX_CALLS
    return 2 * k * math.ceil(math.log2(MAX_BATCH / k)) + 2 * k + 1


def _split_events(s: Stack) -> list[dict[str, Any]]:
    """The workers' `batch` events of finished splits."""
    assert s.workers is not None
    events = []
    for line in s.workers.logs().splitlines():
        if line.startswith("{") and '"split": true' in line:
            event = json.loads(line)
            if event.get("event") == "batch":
                events.append(event)
    return events


def _drained(s: Stack) -> Callable[[], bool]:
    return lambda: s.pending() == 0 and s.queued() == 0


def _bad_openids_run(k: int, batches: int, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    with stack(
        fans=4_000,
        processes=4,
        threads=4,
        TAGSYNC_RATE="50",
        TAGSYNC_LINGER_MS="300",
        TAGSYNC_LOG_FORMAT="json",
    ) as s:
        s.sim_post("/_sim/config", {"max_tags_per_fan": 1})
        blocker = s.client.create_tag("full").id
        tags = [s.client.create_tag(f"bad{i}").id for i in range(batches)]
        fans = s.fans(MAX_BATCH * batches)
        # k fans of each batch already carry their one allowed tag: WeChat answers 45059.
        bad = [rng.sample(fans[i * MAX_BATCH : (i + 1) * MAX_BATCH], k) for i in range(batches)]
        s.sim_post("/_sim/members", {"tagid": blocker, "openids": [o for b in bad for o in b]})
        time.sleep(1.05 - time.time() % 1)
        s.sim_post("/_sim/config", {"rate_per_sec": 50})
        started = time.time()
        base = time.time() - 60
        for i, tag in enumerate(tags):
            group = fans[i * MAX_BATCH : (i + 1) * MAX_BATCH]
            rng.shuffle(group)  # the bad openids land anywhere in the batch
            producers.send(
                {"op": "tag", "tag_id": tag, "openid": o, "ts": base + j / 1000, "account": ACCOUNT}
                for j, o in enumerate(group)
            )
        wait_for(_drained(s), timeout_s=900, what="batches settled", poll_s=0.2)
        seconds = time.time() - started
        stats = s.sim_get("/_sim/stats")
        dead = [letter for _, letter in DeadLetters(s.redis).scan()]
        splits = _split_events(s)
    per_batch = [int(e["calls"]) for e in splits]
    unique = Counter((letter.tag_id, letter.openid) for letter in dead)
    expected = {(tags[i], o) for i, group in enumerate(bad) for o in group}
    bound = halving_bound(k)
    return {
        "k": k,
        "batches": batches,
        "calls_per_batch_max": max(per_batch, default=0),
        "calls_per_batch_mean": round(statistics.mean(per_batch), 1) if per_batch else 0,
        "bound": bound,
        "batches_within_bound": sum(c <= bound for c in per_batch),
        "dead_letters": len(dead),
        "dead_letters_exact": set(unique) == expected and max(unique.values()) == 1,
        "seconds": round(seconds, 1),
        "errcode_45011": int(stats["errcodes"].get("45011", 0)),
        "overlapping_batches": int(stats["overlapping_batches"]),
    }


def run_bad_openids(*, quick: bool = False) -> dict[str, Any]:
    """k = 1, 5, 25, 50 bad openids in batches of 50, rate 50/s, 4 processes."""
    batches = 3 if quick else 12
    runs = [_bad_openids_run(k, batches, seed=k) for k in (1, 5, 25, 50)]
    met = all(
        r["dead_letters_exact"]
        and r["calls_per_batch_max"] <= MAX_CALLS
        and r["errcode_45011"] == 0
        and r["overlapping_batches"] == 0
        for r in runs
    )
    within = sum(r["batches_within_bound"] for r in runs)
    return {
        "runs": runs,
        "batches_within_bound": f"{within}/{sum(r['batches'] for r in runs)}",
        "target": "calls per batch within the bound; <= 55 always; dead letters exact; 0 x 45011",
        "met": met and within == sum(r["batches"] for r in runs),
    }


def _backlog_events(seed: int, *, events: int, tags: list[int], fans: list[str]) -> list[Any]:
    """Application events: 70/30 tag/untag, event times shuffled within a 2 s window."""
    rng = random.Random(seed)
    base = time.time() - 3600
    intents = []
    for i in range(events):
        intents.append(
            {
                "op": "tag" if rng.random() < 0.7 else "untag",
                "tag_id": rng.choice(tags),
                "openid": rng.choice(fans),
                "ts": base + i / 1000 + rng.uniform(0, 2),
                "account": ACCOUNT,
            }
        )
    return intents


def _minimum_calls(intents: list[Any]) -> int:
    """Calls if every intent were merged before any batch left: per tag and op, ceil(n/50)."""
    latest: dict[tuple[int, str], tuple[float, str]] = {}
    for intent in intents:
        key = (intent["tag_id"], intent["openid"])
        if key not in latest or intent["ts"] >= latest[key][0]:
            latest[key] = (intent["ts"], intent["op"])
    per: Counter[tuple[int, str]] = Counter((tag, op) for (tag, _), (_, op) in latest.items())
    return sum(math.ceil(n / MAX_BATCH) for n in per.values())


def run_backlog_fill(*, quick: bool = False) -> dict[str, Any]:
    """10,000 intents queued before the workers start (one message each): calls vs minimum."""
    events = 1_000 if quick else 10_000
    repeats = 1 if quick else 3
    runs = []
    for seed in range(repeats):
        with stack(
            fans=4_000,
            processes=2,
            threads=4,
            workers=False,
            TAGSYNC_RATE="100",
            TAGSYNC_LINGER_MS="500",
        ) as s:
            tags = [s.client.create_tag(f"fill{i}").id for i in range(20)]
            fans = s.fans(2_000)
            intents = _backlog_events(seed, events=events, tags=tags, fans=fans)
            for intent in intents:  # one message per event, as an application sends them
                producers.send([intent])
            s.start_workers(processes=2, threads=4)
            wait_for(_drained(s), timeout_s=600, what="backlog applied", poll_s=0.2)
            calls = s.batch_calls()["calls"]
        minimum = _minimum_calls(intents)
        runs.append({"calls": calls, "minimum": minimum, "ratio": round(calls / minimum, 4)})
    worst = max(r["ratio"] for r in runs)
    return {
        "intents": events,
        "runs": runs,
        "worst_ratio": worst,
        "target": "<= 1.02",
        "met": worst <= 1.02,
    }
