"""Scenario ``redaction``: masking known secrets in log lines as a process meets more tokens.

A worker serving many accounts knows a token (and often a secret) per account, and every
log line is searched for each of them. Measured: the time to learn N values and to redact
one batch log line, at N = 2 (one account), 200 and 2,000. The search must not grow with N:
it did (one regex of every value, compiled again per new token: 1.2 s to learn 200 tokens,
81 us a line at 200; 136 s and 700 us at 2,000).
"""

from __future__ import annotations

import random
import string
import time
import timeit
from typing import Any

from fakewechat import DEFAULT_SECRET
from worker.observability.redaction import Redactor

#: A rendered ``batch`` line (JSON), as a worker writes one per WeChat call.
LINE = (
    '{"account": "wx5f1d0c0ffee0tag", "tag": 101, "op": "tag", "size": 50, "errcode": 0, '
    '"attempt": 1, "applied": 50, "dead_lettered": 0, "calls": 1, "call": "a1b2c3d4e5f6", '
    '"duration": 0.0123, "event": "batch", "level": "info", "logger": "tagsync.flush", '
    '"timestamp": "2026-12-06T03:58:41.123456Z"}'
)


def _token(rng: random.Random) -> str:
    return "".join(rng.choice(string.ascii_letters + string.digits) for _ in range(64))


def _measure(count: int, rng: random.Random, lines: int) -> dict[str, Any]:
    values = [DEFAULT_SECRET, *(_token(rng) for _ in range(count - 1))]
    redactor = Redactor()
    started = time.perf_counter()
    for value in values:
        redactor.add(value)
    learn_s = time.perf_counter() - started
    leaked = LINE.replace("a1b2c3d4e5f6", values[-1])
    assert values[-1] not in redactor.redact(leaked)
    per_line = timeit.timeit(lambda: redactor.redact(LINE), number=lines) / lines
    return {
        "values": count,
        "learn_ms": round(learn_s * 1000, 2),
        "us_per_line": round(per_line * 1e6, 1),
    }


def run(*, quick: bool = False) -> dict[str, Any]:
    """Learn 2, 200 and 2,000 values; redact a batch line with each."""
    rng = random.Random(7)
    lines = 2_000 if quick else 20_000
    runs = [_measure(count, rng, lines) for count in (2, 200, 2_000)]
    growth = runs[-1]["us_per_line"] / runs[0]["us_per_line"]
    return {
        "runs": runs,
        "line_cost_2000_over_2": round(growth, 2),
        "target": "a line at 2,000 values <= 2x a line at 2",
        "met": growth <= 2.0,
    }
