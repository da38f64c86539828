"""The Redis keys of one (account, tag) and which of them each Lua script declares.

Every key of a tag carries the hash tag ``{account:tag}``, so one tag's keys share a Redis
Cluster slot and a script may touch them all. ``SCRIPT_KEYS`` is the one place that says
which keys a script gets, in the order of its ``KEYS[...]`` header.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

#: The set of every "account:tag" that has had intents.
TAG_INDEX = "tagsync:tags"
#: The set of every "account:tag" WeChat said does not exist.
GONE_INDEX = "tagsync:gone"

KeyName = Literal[
    "pending:tag",
    "pending:untag",
    "inflight",
    "split:tag",
    "split:untag",
    "sent",
    "sent:old",
    "sched",
    "since",
    "lease",
    "failures",
    "attempts",
    "first_seen",
    "gone",
    "held",
    "history",
    "history_at",
]

#: Per script, the tag keys it declares, in ``KEYS`` order ("batch" and "split" are the
#: batch hash a call names: the in-flight batch or the split of one op).
SCRIPT_KEYS: dict[str, tuple[str, ...]] = {
    "ingest": (
        "pending:tag", "pending:untag", "inflight", "sent", "sched", "since", "gone",
        "attempts", "first_seen", "split:tag", "split:untag", "held", "history", "history_at",
        "sent:old",
    ),
    "take": (
        "pending:tag", "pending:untag", "inflight", "lease", "since", "failures",
        "split:tag", "split:untag", "gone", "held", "sent", "sent:old",
    ),
    "ack": (
        "batch", "lease", "failures", "attempts", "first_seen", "history",
        "pending:tag", "pending:untag",
    ),
    "drop": ("batch", "lease", "attempts", "first_seen"),
    "nack": (
        "pending:tag", "pending:untag", "batch", "lease", "failures", "attempts", "first_seen",
    ),
    "suspect": ("inflight", "lease", "split"),
    "plan": ("lease", "split"),
    "renew": ("lease",),
    "release": (
        "pending:tag", "pending:untag", "inflight", "lease", "sched", "since",
        "split:tag", "split:untag", "held",
    ),
    "sweep": (
        "pending:tag", "pending:untag", "inflight", "lease", "sched", "split:tag", "split:untag",
        "held",
    ),
    "tag_gone": (
        "pending:tag", "pending:untag", "inflight", "gone", "lease", "split:tag", "split:untag",
    ),
    "drop_tag": (
        "lease", "pending:tag", "pending:untag", "inflight", "split:tag", "split:untag",
        "attempts", "first_seen", "since",
    ),
}  # fmt: skip
#: Scripts made of others: each part's text runs as a local function of the script (with
#: its own KEYS and ARGV), and the script's keys are its parts' keys in order.
COMPOSED: dict[str, tuple[str, ...]] = {"ack_take": ("ack", "take")}
SCRIPT_KEYS.update(
    {name: sum((SCRIPT_KEYS[part] for part in parts), ()) for name, parts in COMPOSED.items()}
)


@dataclass(frozen=True)
class TagKeys:
    """The Redis keys of one (account, tag)."""

    account: str
    tag_id: int

    @property
    def member(self) -> str:
        """The tag's member in ``TAG_INDEX`` and ``GONE_INDEX``."""
        return f"{self.account}:{self.tag_id}"

    def key(self, name: str) -> str:
        """The full key of ``name`` (e.g. ``"pending:tag"``)."""
        return f"tagsync:{{{self.account}:{self.tag_id}}}:{name}"

    def split(self, op: str) -> str:
        """The split hash of one op."""
        return self.key(f"split:{op}")

    def for_script(self, script: str, *, batch: str | None = None) -> list[str]:
        """The keys ``script`` declares; ``batch`` is the batch hash the call is about."""
        keys = []
        for name in SCRIPT_KEYS[script]:
            if name in ("batch", "split"):
                if batch is None:
                    raise ValueError(f"{script} needs the batch hash it works on")
                keys.append(batch)
            else:
                keys.append(self.key(name))
        return keys

    def encoded(self, script: str, *, batch: str | None = None) -> tuple[bytes, ...]:
        """``for_script`` as bytes, built once per (tag, script, batch): a call sends up to
        19 of them, and redis-py encodes each str argument anew on every command."""
        return _encoded_keys(self, script, batch)


@lru_cache(maxsize=8192)  # a few tags' worth per flush thread; ~1 kB an entry
def _encoded_keys(keys: TagKeys, script: str, batch: str | None) -> tuple[bytes, ...]:
    return tuple(key.encode() for key in keys.for_script(script, batch=batch))


def parse_member(member: str | bytes) -> tuple[str, int]:
    """(account, tag_id) of a ``TAG_INDEX`` member."""
    text = member.decode() if isinstance(member, bytes) else member
    account, _, tag = text.rpartition(":")
    return account, int(tag)
