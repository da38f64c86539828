"""What the simulator saw: calls, errcodes, batch sizes, the busiest second, overlaps, a log."""

from __future__ import annotations

import time
from collections import Counter, deque
from typing import Any

#: How many batch calls `/_sim/log` keeps.
BATCH_LOG_SIZE = 20_000
#: Most openids of one batch call kept in the log.
LOGGED_OPENIDS = 51
#: The batch call paths and their kind in `batch_sizes`.
BATCH_KINDS = {"tags/members/batchtagging": "tagging", "tags/members/batchuntagging": "untagging"}


class Stats:
    """Counters of one simulated app (``/_sim/stats``) and its batch call log (``/_sim/log``)."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.errcodes: Counter[str] = Counter()
        self.batch_sizes: dict[str, Counter[str]] = {"tagging": Counter(), "untagging": Counter()}
        self._second = 0
        self.calls_this_second = 0
        self.max_calls_in_any_second = 0
        self.overlapping_batches = 0
        self._in_flight_tags: Counter[int] = Counter()
        self.first_batch_at: float | None = None
        self.last_batch_at: float | None = None
        self.log: deque[dict[str, Any]] = deque(maxlen=BATCH_LOG_SIZE)

    def received(self, path: str, body: Any) -> None:
        """Count a call as it arrives, whatever its answer will be."""
        self.calls[path] += 1
        kind = BATCH_KINDS.get(path)
        if kind and isinstance(body, dict) and isinstance(body.get("openid_list"), list):
            self.batch_sizes[kind][str(len(body["openid_list"]))] += 1

    def api_call(self, path: str) -> int:
        """Count an API call (not a token fetch) in its calendar second; the second's count."""
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second, self.calls_this_second = second, 0
        self.calls_this_second += 1
        self.max_calls_in_any_second = max(self.max_calls_in_any_second, self.calls_this_second)
        if path in BATCH_KINDS:
            if self.first_batch_at is None:
                self.first_batch_at = now
            self.last_batch_at = now
        return self.calls_this_second

    def answered(self, path: str, body: Any, code: str) -> None:
        """Count the answer's errcode, and log a batch call."""
        self.errcodes[code] += 1
        if path in BATCH_KINDS and isinstance(body, dict):
            self.log.append(
                {
                    "at": time.time(),
                    "op": "untag" if path.endswith("untagging") else "tag",
                    "tagid": body.get("tagid"),
                    "openids": list(body.get("openid_list") or [])[:LOGGED_OPENIDS],
                    "errcode": code,
                }
            )

    def batch_started(self, tag_id: int) -> None:
        """A batch call of ``tag_id`` is being answered; another one now is an overlap."""
        if self._in_flight_tags[tag_id]:
            self.overlapping_batches += 1
        self._in_flight_tags[tag_id] += 1

    def batch_done(self, tag_id: int) -> None:
        """The batch call of ``tag_id`` was answered."""
        if self._in_flight_tags[tag_id] > 0:
            self._in_flight_tags[tag_id] -= 1

    def document(self, token_fetches: int) -> dict[str, Any]:
        """The ``/_sim/stats`` document."""
        return {
            "calls": dict(self.calls),
            "errcodes": dict(self.errcodes),
            "batch_sizes": {kind: dict(c) for kind, c in self.batch_sizes.items()},
            "token_fetches": token_fetches,
            "max_calls_in_any_second": self.max_calls_in_any_second,
            "overlapping_batches": self.overlapping_batches,
            "first_batch_at": self.first_batch_at,
            "last_batch_at": self.last_batch_at,
        }


def merged(documents: list[dict[str, Any]]) -> dict[str, Any]:
    """Several apps' ``/_sim/stats`` documents as one, with ``"apps": n``.

    Counts are summed per key; ``max_calls_in_any_second`` is the largest of the apps' (a
    lower bound of all apps' busiest second, which would need per-second history).
    """
    calls: Counter[str] = Counter()
    errcodes: Counter[str] = Counter()
    batch_sizes: dict[str, Counter[str]] = {kind: Counter() for kind in BATCH_KINDS.values()}
    for document in documents:
        calls.update(document["calls"])
        errcodes.update(document["errcodes"])
        for kind, sizes in document["batch_sizes"].items():
            batch_sizes.setdefault(kind, Counter()).update(sizes)
    firsts = [d["first_batch_at"] for d in documents if d["first_batch_at"] is not None]
    lasts = [d["last_batch_at"] for d in documents if d["last_batch_at"] is not None]
    return {
        "calls": dict(calls),
        "errcodes": dict(errcodes),
        "batch_sizes": {kind: dict(sizes) for kind, sizes in batch_sizes.items()},
        "token_fetches": sum(d["token_fetches"] for d in documents),
        "max_calls_in_any_second": max(
            (d["max_calls_in_any_second"] for d in documents), default=0
        ),
        "overlapping_batches": sum(d["overlapping_batches"] for d in documents),
        "first_batch_at": min(firsts, default=None),
        "last_batch_at": max(lasts, default=None),
        "apps": len(documents),
    }
