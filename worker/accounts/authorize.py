"""An Open Platform authorization stored (``tagsync accounts authorize``, ``POST
/v1/accounts``): the refresh token kept, and a revoked authorization's pause lifted."""

from __future__ import annotations

import redis

from worker.accounts.authorized import AuthorizedAccounts
from worker.accounts.config import APPID_RE
from worker.gate import AccountGate
from worker.pending import PendingStore
from worker.queues import send_flushes
from worker.wechat.tokens import RedisTokenStore


def authorize_account(
    connection: redis.Redis, appid: str, refresh_token: str, queue: redis.Redis | None = None
) -> bool:
    """Store the authorization and lift a revoked authorization's pause; True if new."""
    if not APPID_RE.fullmatch(appid):
        raise ValueError(f"{appid!r} is not an AppID")
    added = AuthorizedAccounts(connection).authorize(appid, refresh_token)
    lift_revoked(connection, appid, queue)
    return added


def lift_revoked(connection: redis.Redis, appid: str, queue: redis.Redis | None = None) -> None:
    """A new authorization: drop tokens had with the old one, lift the pause, wake the tags."""
    RedisTokenStore(connection, appid).clear()
    if AccountGate(connection, rate=1).lift(appid, "authorization"):
        send_flushes(queue or connection, PendingStore(connection).wake(appid))
