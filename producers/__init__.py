"""What application code imports to say "fan X should (not) carry tag T".

    import producers
    producers.tag(134, "ocYxcuAEy30bX0NXmGn4ypqx3tI0")
    producers.untag(134, openids_iterable, ts=event.time)
    producers.tag("VIP", openid)   # by name: the worker resolves it per account

Every call checks all its intents first and enqueues nothing if one is bad
(``InvalidIntent`` names the index and field). Depends on dramatiq and redis only.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from producers._queue import NotConfigured, NotReplicated, configure, enqueue
from producers.batching import Producer
from producers.intents import QUEUE_NAME, Intent, InvalidIntent, build_intents, parse_intents


def tag(
    tag_id: int | str,
    openids: str | Iterable[str],
    *,
    ts: float | None = None,
    account: str | None = None,
) -> int:
    """Enqueue "tag these fans with ``tag_id``" (a tag id, or a tag's name); return how
    many intents were enqueued."""
    return enqueue(build_intents("tag", tag_id, openids, ts, account))


def untag(
    tag_id: int | str,
    openids: str | Iterable[str],
    *,
    ts: float | None = None,
    account: str | None = None,
) -> int:
    """Enqueue "untag these fans from ``tag_id``" (a tag id, or a tag's name); return how
    many intents were enqueued."""
    return enqueue(build_intents("untag", tag_id, openids, ts, account))


def send(intents: Iterable[Any]) -> int:
    """Enqueue intent dicts (``op``, ``tag_id`` or ``tag``, ``openid``, optional ``ts`` and
    ``account``)."""
    return enqueue(parse_intents(intents))


__all__ = [
    "QUEUE_NAME",
    "Intent",
    "InvalidIntent",
    "NotConfigured",
    "NotReplicated",
    "Producer",
    "configure",
    "enqueue",
    "send",
    "tag",
    "untag",
]
