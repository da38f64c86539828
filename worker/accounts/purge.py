"""Purging an account's intents: every pending, in-flight and split intent of its tags
becomes a dead letter (reason ``account_purged``), so nothing is lost silently and a
``dlq replay`` can bring them back once the account is served again."""

from __future__ import annotations

import time
import uuid

import structlog

from worker.dead_letters import DeadLetter, DeadLetters
from worker.pending import PendingStore

log = structlog.get_logger("tagsync.accounts")

#: How long to wait for a running flush of a tag to let go of it.
LEASE_WAIT_S = 30.0
#: The lease a purge holds on each tag while it empties it.
PURGE_LEASE_MS = 60_000


def purge_account(store: PendingStore, dead_letters: DeadLetters, appid: str) -> int:
    """Dead-letter every intent still held for ``appid``; return how many."""
    purged = 0
    for account, tag_id in store.tags():
        if account != appid:
            continue
        owner = uuid.uuid4().hex
        deadline = time.monotonic() + LEASE_WAIT_S
        while not store.acquire(account, tag_id, owner, PURGE_LEASE_MS):
            if time.monotonic() > deadline:
                raise TimeoutError(f"tag {tag_id} of {appid} stays leased by a running flush")
            time.sleep(0.1)
        try:
            entries = store.tag_gone(account, tag_id, owner)
            now = time.time()
            purged += dead_letters.add(
                DeadLetter(
                    account,
                    tag_id,
                    op,
                    openid,
                    ts,
                    reason="account_purged",
                    errmsg="the operator purged the account's intents",
                    first_seen=now,
                )
                for op, openid, ts in entries
            )
            store.drop_tag(account, tag_id, owner)
        finally:
            # The tag is not gone at WeChat: intents for it are welcome again later.
            store.clear_gone(account, tag_id)
            store.release(account, tag_id, owner)
    log.warning("account.purged", account=appid, dead_lettered=purged)
    return purged
