"""Scenarios `ingest_bulk` and `ingest_single`: intents/s from the producer API until they
sit in the pending buffers. WeChat calls are paused, so only ingest is measured; 2 worker
processes. Each figure is the median of three runs on fresh tags."""

from __future__ import annotations

import statistics
import threading
import time
from typing import Any

import producers
from bench.harness import ACCOUNT, Stack, stack, wait_for


def _openid(i: int) -> str:
    return f"obench{i:022d}"


def _bulk_run(s: Stack, run: int, count: int) -> float:
    tags = [10_000 + run * 100 + t for t in range(20)]
    per_tag = count // len(tags)
    intents = [
        {"op": "tag" if i % 2 else "untag", "tag_id": tag, "openid": _openid(i), "account": ACCOUNT}
        for tag in tags
        for i in range(per_tag)
    ]
    before = s.pending()
    started = time.perf_counter()
    producers.send(intents)
    wait_for(lambda: s.pending() - before >= len(intents), timeout_s=300, what="bulk ingest")
    return len(intents) / (time.perf_counter() - started)


def _single_run(
    s: Stack, run: int, count: int, threads: int = 4, *, batched: bool = False
) -> float:
    tag = 20_000 + run + (100 if batched else 0)
    before = s.pending()
    shared = producers.Producer(linger_ms=5) if batched else None
    tag_one = shared.tag if shared is not None else producers.tag

    def produce(part: int) -> None:
        for i in range(part, count, threads):
            tag_one(tag, _openid(i), account=ACCOUNT)

    started = time.perf_counter()
    workers = [threading.Thread(target=produce, args=(p,)) for p in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    if shared is not None:
        shared.close()
    wait_for(lambda: s.pending() - before >= count, timeout_s=300, what="single ingest")
    return count / (time.perf_counter() - started)


def run_bulk(*, quick: bool = False) -> dict[str, Any]:
    """`producers.send` of 1,000-intent messages over 20 tags."""
    count = 20_000 if quick else 200_000
    with stack(processes=2, threads=8) as s:
        s.pause()
        rates = [_bulk_run(s, run, count) for run in range(3)]
    median = statistics.median(rates)
    return {
        "intents_per_s": round(median),
        "runs": [round(r) for r in rates],
        "intents_per_run": count,
        "target": ">= 50000",
        "met": median >= 50_000,
    }


def run_single(*, quick: bool = False) -> dict[str, Any]:
    """One `producers.tag(tag, openid)` per event from 4 producer threads."""
    count = 2_000 if quick else 20_000
    with stack(processes=2, threads=8) as s:
        s.pause()
        rates = [_single_run(s, run, count) for run in range(3)]
        # The same events through one shared producers.Producer (what docs/producing.md advises).
        batched = [_single_run(s, run, count, batched=True) for run in range(3)]
    median = statistics.median(rates)
    return {
        "intents_per_s": round(median),
        "runs": [round(r) for r in rates],
        "with_producer_intents_per_s": round(statistics.median(batched)),
        "intents_per_run": count,
        "target": ">= 5000",
        "met": median >= 5_000,
    }
