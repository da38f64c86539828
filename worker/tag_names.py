"""Tag names: an intent may name its tag ("VIP") instead of numbering it; the worker
resolves the name per account before the intent is merged (coalescing needs the id: an
intent for "VIP" and one for 134 about the same fan must be one last write).

1. ingest looks the message's names up in the account's cache (one ``HMGET``) and merges
   the intents whose name it knows;
2. the others travel in a ``resolve_tag`` message per (account, name); the resolver asks
   ``tags/get`` (one process of the deployment at a time per account, through the gate,
   at most every ``NAME_REFRESH_MS``), and with ``TAGSYNC_CREATE_TAGS=1`` creates a tag
   the list lacks;
3. the resolved intents are merged as any other; an unknown name (creating off), a tag
   WeChat will not create (45056: 100 tags) or a name it refuses is dead-lettered
   (``unknown_tag``, ``tag_limit``), each intent once.

The cache (``tagsync:{account}:tag_names``, name -> id) expires after ``CACHE_TTL_S``, so a
rename made outside tagsync is learnt; ``tagsync tags`` commands and a tag found gone
(45159) clear it at once. An intent already resolved keeps its tag id: renaming a tag
keeps its pending intents.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import structlog
from redis import Redis

from producers.intents import Intent, InvalidIntent, parse_row
from worker.accounts.directory import Account, AccountDirectory
from worker.base.backoff import backoff_ms
from worker.dead_letters import DeadLetter, DeadLetters
from worker.gate import MAX_SLEEP_MS, pause_for
from worker.wechat.client import Tag
from worker.wechat.errcodes import Action
from worker.wechat.errors import WeChatError

log = structlog.get_logger("tagsync.tag_names")

#: How long a cached name -> id stays trusted: a rename outside tagsync is learnt by then.
CACHE_TTL_S = 300
#: A miss asks ``tags/get`` again only if the cache is older than this: a stream of
#: intents for an unknown name must not spend a call each (one list a second at most).
NAME_REFRESH_MS = 1_000
#: How long one resolver may hold an account's names (longer than a call's timeouts).
LOCK_MS = 30_000
#: How soon a resolver that found another one at work looks again.
LOCK_RETRY_MS = 200
#: Most transient failures (-1, timeouts) a name's intents live through before they are
#: dead-lettered as ``retries_exhausted``.
MAX_ATTEMPTS = 10
#: Backoff after a transient failure: this, doubling, with full jitter, capped.
BACKOFF_MS = 1_000
MAX_BACKOFF_MS = 60_000
#: A pause is looked at again at least this often (a lifted pause takes effect soon).
PAUSE_RECHECK_MS = 5_000

_UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


#: Enqueue the resolution of a name for the queue rows naming it:
#: ``(account, name, rows, attempt, delay_ms, slot_at)`` (``actors.send_resolve``).
SendResolve = Callable[[str, str, list[list[Any]], int, int, int | None], None]


class TagNames:
    """The per-account cache of tag names in Redis."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._unlock = redis.register_script(_UNLOCK)

    @staticmethod
    def key(account: str, name: str = "") -> str:
        """The cache's key (``name``: a sub-key, 'at' or 'lock')."""
        return f"tagsync:{{{account}}}:tag_names" + (f":{name}" if name else "")

    def lookup(self, account: str, names: list[str]) -> dict[str, int]:
        """The ids of the names the cache knows."""
        if not names:
            return {}
        ids = self.redis.hmget(self.key(account), names)
        return {name: int(i) for name, i in zip(names, ids, strict=True) if i is not None}

    def store(self, account: str, tags: Iterable[Any]) -> None:
        """Replace the account's names with ``tags`` (each has ``id`` and ``name``)."""
        mapping = {tag.name: tag.id for tag in tags}
        pipe = self.redis.pipeline(transaction=True)
        pipe.delete(self.key(account))
        if mapping:
            pipe.hset(self.key(account), mapping=mapping)
            pipe.expire(self.key(account), CACHE_TTL_S)
        pipe.set(self.key(account, "at"), int(time.time() * 1000), ex=CACHE_TTL_S)
        pipe.execute()

    def add(self, account: str, name: str, tag_id: int) -> None:
        """Remember one name (a tag just created)."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(self.key(account), name, tag_id)
        pipe.expire(self.key(account), CACHE_TTL_S)
        pipe.execute()

    def forget(self, account: str) -> None:
        """Drop the account's names: the next miss asks WeChat (a tag renamed, deleted)."""
        self.redis.delete(self.key(account), self.key(account, "at"))

    def age_ms(self, account: str) -> float | None:
        """How long ago the names were last listed (None: not cached)."""
        at = self.redis.get(self.key(account, "at"))
        return None if at is None else time.time() * 1000 - int(at)

    def lock(self, account: str, owner: str) -> bool:
        """Become the account's one resolver for ``LOCK_MS``."""
        return bool(self.redis.set(self.key(account, "lock"), owner, nx=True, px=LOCK_MS))

    def unlock(self, account: str, owner: str) -> None:
        """Let go of the account's names (only if still ours)."""
        self._unlock(keys=[self.key(account, "lock")], args=[owner])


class _Later(Exception):
    """Try again after ``delay_ms`` (``counted``: it was a failure, not a wait), for the
    call slot ``slot_at`` when one was reserved (kept, so a busy account's resolver is
    not sent to the back of the line again and again)."""

    def __init__(self, delay_ms: int, *, counted: bool = False, slot_at: int | None = None) -> None:
        super().__init__(delay_ms)
        self.delay_ms = delay_ms
        self.counted = counted
        self.slot_at = slot_at


class _Refused(Exception):
    """The name cannot be resolved: dead-letter its intents with this reason."""

    def __init__(self, reason: str, errcode: int | None, errmsg: str) -> None:
        super().__init__(errmsg)
        self.reason = reason
        self.errcode = errcode
        self.errmsg = errmsg


def resolved_rows(rows: list[list[Any]], tag_id: int) -> list[list[Any]]:
    """``rows`` (naming a tag) for the tag ``tag_id``."""
    return [[row[0], tag_id, *row[2:]] for row in rows]


@dataclass(kw_only=True)
class NameResolver:
    """Resolves the names of intents that ingest could not resolve from the cache."""

    names: TagNames
    accounts: AccountDirectory
    dead_letters: DeadLetters
    #: Merges resolved rows into the pending buffers (the ingest step).
    merge: Callable[[list[list[Any]]], object]
    send_resolve: SendResolve
    #: Create an unknown tag (``TAGSYNC_CREATE_TAGS=1``) rather than dead-letter its intents.
    create_tags: bool

    def resolve(
        self,
        account: str,
        name: str,
        rows: list[list[Any]],
        attempt: int = 0,
        slot_at: int | None = None,
    ) -> None:
        """Merge ``rows`` under the id of ``name``, or schedule a retry, or dead-letter."""
        known = self.names.lookup(account, [name]).get(name)
        if known is not None:
            self.merge(resolved_rows(rows, known))
            return
        served = self.accounts.get(account)
        if served is None:
            self._dead_letter(account, name, rows, "unknown_account", None, "no such account")
            return
        owner = uuid.uuid4().hex
        if not self.names.lock(account, owner):
            self.send_resolve(account, name, rows, attempt, LOCK_RETRY_MS, slot_at)
            return
        try:
            # Another resolver may have listed the name between our look and the lock.
            known = self.names.lookup(account, [name]).get(name)
            tag_id = known if known is not None else self._resolve(served, name, slot_at)
        except _Later as later:
            delay_ms = later.delay_ms
            if later.counted:
                attempt += 1
                if attempt >= MAX_ATTEMPTS:
                    self._dead_letter(
                        account, name, rows, "retries_exhausted", None, "tags/get kept failing"
                    )
                    return
                delay_ms = backoff_ms(attempt, min_ms=BACKOFF_MS, max_ms=MAX_BACKOFF_MS)
            self.send_resolve(account, name, rows, attempt, delay_ms, later.slot_at)
            return
        except _Refused as refused:
            self._dead_letter(account, name, rows, refused.reason, refused.errcode, refused.errmsg)
            return
        finally:
            self.names.unlock(account, owner)
        self.merge(resolved_rows(rows, tag_id))

    def _resolve(self, served: Account, name: str, slot_at: int | None) -> int:
        """The id of ``name``: listed (refreshing a stale cache) or created; else raise."""
        account = served.appid
        age = self.names.age_ms(account)
        if age is None or age >= NAME_REFRESH_MS:
            found = self._refresh(served, name, slot_at)
            if found is not None:
                return found
        if not self.create_tags:
            raise _Refused(
                "unknown_tag", None, f"no tag named {name!r} (TAGSYNC_CREATE_TAGS=1 creates it)"
            )
        try:
            tag: Tag = self._gated(
                served, "tags/create", lambda: served.client.create_tag(name), slot_at
            )
        except WeChatError as exc:
            if exc.errcode == 45157:
                # Taken: created meanwhile elsewhere (another deployment, an operator).
                found = self._refresh(served, name)
                if found is not None:
                    return found
                raise _Refused("unknown_tag", exc.errcode, exc.errmsg) from None
            if exc.errcode == 45056:
                raise _Refused("tag_limit", exc.errcode, exc.errmsg) from None
            raise _Refused("tag_refused", exc.errcode, exc.errmsg) from None
        except ValueError as exc:  # a name the client refuses before calling
            raise _Refused("tag_refused", None, str(exc)) from None
        self.names.add(account, tag.name, tag.id)
        log.info("tag.created", account=account, tag=tag.id, name=tag.name)
        return tag.id

    def _refresh(self, served: Account, name: str, slot_at: int | None = None) -> int | None:
        """List the account's tags into the cache; the id of ``name`` if listed."""
        tags = self._gated(served, "tags/get", served.client.list_tags, slot_at)
        self.names.store(served.appid, tags)
        return next((tag.id for tag in tags if tag.name == name), None)

    def _gated(
        self, served: Account, api: str, call: Callable[[], Any], slot_at: int | None = None
    ) -> Any:
        """``call`` in a slot of the account's gate; a wait, pause or transient failure
        raises ``_Later``; a refusal (REPORT) is raised as the ``WeChatError`` it is."""
        admission = served.gate.admit(served.appid, api=api, slot_at=slot_at)
        if admission.kind == "paused":
            raise _Later(min(max(admission.wait_ms, 1), PAUSE_RECHECK_MS))
        if admission.kind == "wait":  # come back shortly before the slot kept for us
            raise _Later(max(0, admission.wait_ms - MAX_SLEEP_MS), slot_at=admission.slot_at)
        if admission.wait_ms:
            time.sleep(admission.wait_ms / 1000)
        try:
            return call()
        except WeChatError as exc:
            row = exc.row
            if row.action is Action.PAUSE:
                ends, _, _ = pause_for(served.gate, served.appid, exc, api=api)
                raise _Later(
                    min(PAUSE_RECHECK_MS, max(1, int((ends - time.time()) * 1000)))
                ) from None
            if row.action is Action.REPORT:
                raise
            log.warning("tag_names.failed", account=served.appid, call=api, error=str(exc))
            raise _Later(0, counted=True) from None

    def _dead_letter(
        self,
        account: str,
        name: str,
        rows: list[list[Any]],
        reason: str,
        errcode: int | None,
        errmsg: str,
    ) -> None:
        now = time.time()
        letters = []
        for row in rows:
            try:
                intent: Intent = parse_row(row)
            except InvalidIntent as exc:
                letters.append(DeadLetter.for_row(row, str(exc)))
                continue
            letters.append(
                DeadLetter(
                    account,
                    intent.tag_id,
                    intent.op,
                    intent.openid,
                    intent.ts,
                    reason=reason,
                    errcode=errcode,
                    errmsg=errmsg,
                    first_seen=now,
                    tag_name=name,
                )
            )
        written = self.dead_letters.add(letters)
        log.warning(
            "tag_names.dead_letter", account=account, reason=reason, errcode=errcode, count=written
        )
