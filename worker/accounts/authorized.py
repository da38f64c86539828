"""Accounts authorized to the Open Platform component, kept in Redis and changed at run time.

An authorizer's refresh token is the only thing that lets tagsync act for a merchant: lose
it and the merchant must authorize again. So a refresh token WeChat rotates is stored here
before the access token that came with it is used, the one it replaced is kept beside it,
and ``export``/``import_`` let an operator keep a copy.

Keys: ``tagsync:accounts:authorized`` (hash appid -> JSON of when it was added),
``tagsync:{appid}:authorization`` (hash: refresh_token, previous, rotated_at),
``tagsync:accounts:version`` (bumped on every change: workers reload when it moves) and
``tagsync:component:ticket`` (hash: ticket, at).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from redis import Redis

from worker.accounts.config import APPID_RE
from worker.base.lua import text
from worker.observability.redaction import REDACTOR

#: appid -> JSON {"added": epoch seconds}.
AUTHORIZED = "tagsync:accounts:authorized"
#: Bumped on every change of the authorized set; running workers compare it.
VERSION = "tagsync:accounts:version"
#: The latest component_verify_ticket WeChat pushed.
TICKET = "tagsync:component:ticket"
#: Format of ``export`` files (checked by ``import_``).
EXPORT_FORMAT = "tagsync-authorizations/1"


def authorization_key(appid: str) -> str:
    """The hash holding ``appid``'s refresh tokens (in the account's cluster slot)."""
    return f"tagsync:{{{appid}}}:authorization"


@dataclass(frozen=True)
class Authorization:
    """One authorized account: when it was added and whether a refresh token is kept."""

    appid: str
    added: float
    has_refresh_token: bool
    rotated_at: float | None = None


class AuthorizedAccounts:
    """The set of authorized accounts and their refresh tokens."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    def version(self) -> int:
        """The change counter of the authorized set."""
        return int(self.redis.get(VERSION) or 0)

    def appids(self) -> set[str]:
        """Every authorized AppID."""
        return {text(a) for a in self.redis.hkeys(AUTHORIZED)}

    def authorize(self, appid: str, refresh_token: str) -> bool:
        """Add ``appid`` (or replace its refresh token); True if it was new."""
        if not refresh_token:
            raise ValueError("the refresh token must not be empty")
        REDACTOR.add(refresh_token)
        # One command at a time, in this order (the keys are in different cluster slots, so
        # no transaction): the token, then the listing, then the counter workers watch.
        self.redis.hset(
            authorization_key(appid),
            mapping={"refresh_token": refresh_token, "previous": "", "rotated_at": time.time()},
        )
        added = self.redis.hsetnx(AUTHORIZED, appid, json.dumps({"added": time.time()}))
        self.redis.incr(VERSION)
        return bool(added)

    def remove(self, appid: str) -> bool:
        """Forget ``appid`` and its refresh tokens; True if it was authorized."""
        # Unlisted first: a worker never serves an account whose tokens are gone.
        removed = self.redis.hdel(AUTHORIZED, appid)
        self.redis.delete(authorization_key(appid))
        self.redis.incr(VERSION)
        return bool(removed)

    def refresh_token(self, appid: str) -> str | None:
        """The current refresh token of ``appid``."""
        value = self.redis.hget(authorization_key(appid), "refresh_token")
        if value is None:
            return None
        token = text(value)
        REDACTOR.add(token)
        return token

    def rotate(self, appid: str, *, new: str, old: str) -> None:
        """Store the refresh token WeChat answered in place of ``old`` (kept as previous)."""
        REDACTOR.add(new)
        self.redis.hset(
            authorization_key(appid),
            mapping={"refresh_token": new, "previous": old, "rotated_at": time.time()},
        )

    def list(self) -> list[Authorization]:
        """Every authorized account, oldest first."""
        raw = {text(k): text(v) for k, v in self.redis.hgetall(AUTHORIZED).items()}
        pipe = self.redis.pipeline(transaction=False)
        appids = sorted(raw, key=lambda a: (json.loads(raw[a]).get("added", 0), a))
        for appid in appids:
            pipe.hmget(authorization_key(appid), ["refresh_token", "rotated_at"])
        found = []
        for appid, (token, rotated) in zip(appids, pipe.execute(), strict=True):
            found.append(
                Authorization(
                    appid,
                    float(json.loads(raw[appid]).get("added", 0)),
                    token is not None,
                    float(rotated) if rotated else None,
                )
            )
        return found

    def export(self) -> dict[str, Any]:
        """Every authorization with its refresh token (a document for ``import_``)."""
        accounts = []
        for entry in self.list():
            token = self.refresh_token(entry.appid)
            if token is not None:
                accounts.append(
                    {"appid": entry.appid, "refresh_token": token, "added": entry.added}
                )
        return {"format": EXPORT_FORMAT, "exported_at": time.time(), "accounts": accounts}

    def import_(self, document: Any, *, overwrite: bool = False) -> tuple[int, int]:
        """Restore an ``export``; (imported, skipped): an account already here keeps its own
        refresh token (it may be newer) unless ``overwrite``."""
        if not isinstance(document, dict) or document.get("format") != EXPORT_FORMAT:
            raise ValueError(f"not a tagsync authorization export (format {EXPORT_FORMAT})")
        entries = document.get("accounts")
        if not isinstance(entries, list):
            raise ValueError("the export has no accounts list")
        checked = []
        for index, entry in enumerate(entries):
            if not isinstance(entry, dict):
                raise ValueError(f"accounts[{index}] is not an object")
            appid, token = entry.get("appid"), entry.get("refresh_token")
            if not isinstance(appid, str) or not APPID_RE.fullmatch(appid):
                raise ValueError(f"accounts[{index}].appid is not an AppID")
            if not isinstance(token, str) or not token:
                raise ValueError(f"accounts[{index}].refresh_token is missing")
            checked.append((appid, token))
        present = self.appids()
        imported = skipped = 0
        for appid, token in checked:
            if appid in present and not overwrite:
                skipped += 1
                continue
            self.authorize(appid, token)
            imported += 1
        return imported, skipped

    # -- the component's ticket ---------------------------------------------------------

    def set_ticket(self, ticket: str) -> None:
        """Keep the latest ``component_verify_ticket`` WeChat pushed."""
        if not ticket or len(ticket) > 512 or not ticket.isprintable():
            raise ValueError("a component_verify_ticket is 1-512 printable characters")
        REDACTOR.add(ticket)
        self.redis.hset(TICKET, mapping={"ticket": ticket, "at": time.time()})

    def ticket(self) -> tuple[str, float] | None:
        """The latest ticket and when it was handed over."""
        ticket, at = self.redis.hmget(TICKET, ["ticket", "at"])
        if ticket is None:
            return None
        value = text(ticket)
        REDACTOR.add(value)
        return value, float(at or 0)
