"""Drain and delete a tag of over 100,000 fans (``tagsync tags delete ID --drain``).

WeChat refuses to delete such a tag (45057). The drain untags just enough fans to bring
it to 99,999, through the pipeline like any intent (rate-limited, coalesced, dead letters
as usual), then deletes it:

1. wait until the pipeline has settled what this drain enqueued (nothing of the tag
   pending or in flight, no intent message waiting to be ingested);
2. read the tag's fan count (``tags/get``): not listed means deleted, done; at most
   100,000, delete it (45057 means the count lagged: go on);
3. page ``user/tag/get`` from the saved cursor for the surplus, enqueue untag intents
   stamped now, save the cursor and the count in Redis; back to 1.

The count, not a tally of what was sent, decides each round: an untag dead-lettered (a fan
who left) or a fan tagged again meanwhile is made up by the next round, and a drain
stopped anywhere (Ctrl-C, a crash) continues where it stood when run again. Progress is
kept in ``tagsync:{account}:drain:<tag>``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from redis import Redis

import producers
from worker.admin.gated_client import GatedClient
from worker.pending import PendingStore
from worker.queues import unsettled_messages
from worker.wechat.client import RESERVED_TAG_IDS
from worker.wechat.errors import WeChatError

#: WeChat deletes a tag of at most this many fans (45057 beyond).
DELETE_LIMIT = 100_000
#: How often a waiting drain looks at the pipeline again.
POLL_S = 1.0
#: Untag intents per message sent to the queue.
CHUNK = 1000


class ReservedTag(ValueError):
    """Tags 0, 1 and 2 are WeChat's own."""

    def __init__(self, tag_id: int) -> None:
        super().__init__(
            f"tag {tag_id} is one of the three system default tags 0/1/2 that WeChat keeps "
            "(45058: they cannot be modified or deleted)"
        )


@dataclass
class DrainState:
    """What a drain has done so far (kept in Redis between runs)."""

    cursor: str = ""
    enqueued: int = 0
    rounds: int = 0


class Drain:
    """Drains one tag of one account, then deletes it."""

    def __init__(
        self,
        client: GatedClient,
        redis: Redis,
        tag_id: int,
        *,
        say: Callable[[str], None],
        poll_s: float = POLL_S,
        queue: Redis | None = None,
    ) -> None:
        if tag_id in RESERVED_TAG_IDS:
            raise ReservedTag(tag_id)
        self.client = client
        self.redis = redis
        self.account = client.appid
        self.tag_id = tag_id
        self.say = say
        self.poll_s = poll_s
        self.key = f"tagsync:{{{self.account}}}:drain:{tag_id}"
        self.store = PendingStore(redis)
        #: The queue's Redis (``TAGSYNC_QUEUE_URL``), where intent messages wait.
        self.queue = queue or redis

    def state(self) -> DrainState:
        """The saved progress (empty for a drain not started)."""
        cursor, enqueued, rounds = self.redis.hmget(self.key, ["cursor", "enqueued", "rounds"])
        text = cursor.decode() if isinstance(cursor, bytes) else str(cursor or "")
        return DrainState(text, int(enqueued or 0), int(rounds or 0))

    def run(self) -> int:
        """Drain, then delete; return how many untag intents this drain enqueued in all."""
        state = self.state()
        if state.rounds:
            self.say(
                f"tag {self.tag_id}: continuing a drain ({state.enqueued} untags enqueued "
                f"in {state.rounds} rounds so far)"
            )
        while True:
            self._wait_settled()
            count = self._count()
            if count is None:
                self.say(f"tag {self.tag_id}: no longer listed: deleted")
                break
            if count <= DELETE_LIMIT and self._delete():
                self.say(f"tag {self.tag_id}: deleted ({state.enqueued} fans untagged first)")
                break
            surplus = max(1, count - DELETE_LIMIT + 1)
            sent = self._untag(surplus, state)
            self.say(
                f"tag {self.tag_id}: {count} fans; {sent} untag intents enqueued "
                f"(round {state.rounds}), waiting for the workers to apply them"
            )
        self.redis.delete(self.key)
        return state.enqueued

    def _count(self) -> int | None:
        """The tag's fan count (``tags/get``), None if it is not listed."""
        for tag in self.client.list_tags():
            if tag.id == self.tag_id:
                return tag.count
        return None

    def _delete(self) -> bool:
        """Delete the tag; False if WeChat still counts over 100,000 fans (45057)."""
        try:
            self.client.delete_tag(self.tag_id)
        except WeChatError as exc:
            if exc.errcode == 45057:
                return False
            raise
        return True

    def _untag(self, surplus: int, state: DrainState) -> int:
        """Enqueue untags of ``surplus`` fans from the saved cursor; save the progress."""
        sent = 0
        stamp = time.time()
        wrapped = False
        while sent < surplus:
            try:
                page = self.client.tag_fans(self.tag_id, state.cursor)
            except WeChatError as exc:
                if exc.errcode != 40003 or not state.cursor:
                    raise
                state.cursor = ""  # the cursor's fan left WeChat: start over (counts decide)
                continue
            openids = page.openids[: surplus - sent]
            if not openids:
                if not state.cursor or wrapped:
                    break  # WeChat lists fewer than it counts: the next round looks again
                state.cursor, wrapped = "", True  # the end: wrap once
                continue
            for start in range(0, len(openids), CHUNK):
                chunk = openids[start : start + CHUNK]
                producers.untag(self.tag_id, chunk, ts=stamp, account=self.account)
            sent += len(openids)
            state.cursor = openids[-1]
            self.redis.hset(
                self.key, mapping={"cursor": state.cursor, "enqueued": state.enqueued + sent}
            )
        state.enqueued += sent
        state.rounds += 1
        self.redis.hset(
            self.key,
            mapping={"cursor": state.cursor, "enqueued": state.enqueued, "rounds": state.rounds},
        )
        return sent

    def _wait_settled(self) -> None:
        """Wait until the pipeline settled the drain's intents: nothing of the tag pending or
        in flight, and either no intent message waiting or the tag seen with a backlog
        since (ours were ingested: with steady traffic the queue is rarely empty)."""
        shown = 0.0
        seen_backlog = False
        while True:
            unsettled = self.store.unsettled(self.account, self.tag_id)
            seen_backlog = seen_backlog or unsettled > 0
            queued = unsettled_messages(self.queue)
            if not unsettled and (seen_backlog or not queued):
                return
            if time.monotonic() - shown >= 5:
                self.say(
                    f"tag {self.tag_id}: {unsettled} intents of it pending or in flight, "
                    f"{queued} intent messages not yet ingested"
                    + ("" if unsettled else " (are workers running?)")
                )
                shown = time.monotonic()
            time.sleep(self.poll_s)
