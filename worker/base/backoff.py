"""Retry backoff, one formula for every retry: the flush's, the name resolver's and the
admin commands'."""

from __future__ import annotations

import random


def backoff_ms(streak: int, *, min_ms: int, max_ms: int, rng: random.Random | None = None) -> int:
    """Exponential backoff with full jitter: uniform in [0, min(max, min * 2^(streak-1))]."""
    cap = min(max_ms, min_ms * 2 ** min(max(streak - 1, 0), 32))
    return int((rng or random).uniform(0, cap))
