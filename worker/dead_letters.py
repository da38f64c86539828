"""The dead-letter store: intents that can never be applied, kept for a human to look at.

A bounded Redis stream (``tagsync:dead_letters``, trimmed to about ``max_len`` entries).
An entry holds what is needed to understand and replay the intent, never a secret.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass

from redis import Redis

from worker.redaction import redact

#: The stream of dead letters.
STREAM = "tagsync:dead_letters"
#: About how many dead letters are kept (older ones are trimmed).
DEFAULT_MAX_LEN = 100_000


@dataclass(frozen=True)
class DeadLetter:
    """One intent given up on, and why."""

    account: str
    tag_id: int
    op: str
    openid: str
    ts: float
    reason: str
    errcode: int | None = None
    errmsg: str = ""
    attempts: int = 0
    first_seen: float | None = None
    dead_lettered_at: float = 0.0

    def fields(self) -> dict[str, str]:
        """The stream entry's fields (empty values omitted)."""
        return {k: str(v) for k, v in asdict(self).items() if v not in (None, "")}


class DeadLetters:
    """Append to and read the dead-letter stream."""

    def __init__(self, redis: Redis, *, max_len: int = DEFAULT_MAX_LEN) -> None:
        self.redis = redis
        self.max_len = max_len

    def add(self, letters: Iterable[DeadLetter]) -> int:
        """Append dead letters (errmsg redacted); return how many."""
        now = time.time()
        pipe = self.redis.pipeline(transaction=False)
        count = 0
        for letter in letters:
            fields = letter.fields()
            fields["errmsg"] = redact(letter.errmsg)[:500]
            fields["dead_lettered_at"] = str(letter.dead_lettered_at or now)
            pipe.xadd(STREAM, fields, maxlen=self.max_len, approximate=True)  # type: ignore[arg-type]
            count += 1
        if count:
            pipe.execute()
        return count

    def count(self) -> int:
        """How many dead letters are kept."""
        return int(self.redis.xlen(STREAM))
