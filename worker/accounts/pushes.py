"""What WeChat's pushes do here (``POST /v1/wechat/component``, ``POST /v1/wechat/<appid>``).

The third-party platform's pushes, sealed with its push token and EncodingAESKey:

- ``component_verify_ticket`` (every 10 minutes): the ticket is stored, as
  ``tagsync component ticket`` stores it;
- ``authorized`` and ``updateauthorized``: the authorization code is traded for the
  account's refresh token (``api_query_auth``) and stored, as ``tagsync accounts
  authorize`` stores it (a revoked account's pause is lifted);
- ``unauthorized``: the account is paused with reason ``authorization`` (its intents are
  kept until it authorizes again or is purged); its refresh token is forgotten.

An account's pushes (plain or safe mode; an account authorized to the component is sealed
with the component's keys): ``unsubscribe`` drops the fan's pending intents (WeChat drops
the tags of a fan who leaves); other events are answered and not kept.

Every push is counted in Redis by kind and outcome (``tagsync_pushes_total``): the ingest
processes that receive them serve no metrics of their own.
"""

from __future__ import annotations

from dataclasses import dataclass

import structlog
from redis import Redis

from worker.accounts.authorize import authorize_account
from worker.accounts.authorized import AuthorizedAccounts
from worker.accounts.component import Component
from worker.accounts.config import AccountsConfig, PushKeys
from worker.gate import AUTHORIZATION_PAUSE_MS, AccountGate
from worker.pending import PendingStore
from worker.wechat.errors import WeChatError
from worker.wechat.push import (
    PushRejected,
    check_signature,
    check_timestamp,
    parse_xml,
)

log = structlog.get_logger("tagsync.pushes")

#: Redis hash of push counts: "<kind>:<outcome>" -> n.
PUSH_COUNTS = "tagsync:pushes"
#: What the server answers a push it took: WeChat retries anything else (3 times). A push
#: refused for its signature, envelope or age gets 403: not WeChat's (or keys misconfigured,
#: which WeChat's console then shows); its retries cost nothing, and nothing is stored.
SUCCESS = "success"
#: The InfoTypes and events counted by name (others as "other": no label from the wire).
KNOWN = frozenset(
    {
        "component_verify_ticket", "authorized", "updateauthorized", "unauthorized",
        "subscribe", "unsubscribe", "message",
    }
)  # fmt: skip


@dataclass(frozen=True)
class Answer:
    """What the HTTP handler answers: a status and a plain-text body."""

    status: int
    body: str


class Pushes:
    """Checks and carries out WeChat's pushes for the accounts of one deployment."""

    def __init__(
        self,
        config: AccountsConfig,
        *,
        redis: Redis,
        component: Component | None,
        queue: Redis | None = None,
    ) -> None:
        self.config = config
        self.redis = redis
        self.component = component
        #: The queue's Redis (``TAGSYNC_QUEUE_URL``), for the flushes an authorization wakes.
        self.queue = queue or redis

    # -- the component's pushes ---------------------------------------------------------

    def component_push(self, query: dict[str, str], body: bytes) -> Answer:
        """A push to ``/v1/wechat/component``."""
        component = self.config.component
        keys = component.push if component is not None else None
        crypto = keys.crypto(component.appid) if keys is not None and component else None
        if crypto is None or self.component is None:
            return self._count("component", "not_configured", Answer(404, "no component push keys"))
        try:
            fields = crypto.open(query, body)
        except PushRejected as exc:
            return self._rejected("component", exc)
        info = fields.get("InfoType", "")
        try:
            self._carry_out(info, fields)
        except PushRejected as exc:
            return self._rejected("component", exc)
        except WeChatError as exc:  # api_query_auth failed: WeChat pushes it again
            log.warning("push.query_auth_failed", info_type=info, error=str(exc))
            return self._count("component", "retry", Answer(503, "try again"))
        return self._count("component", info, Answer(200, SUCCESS))

    def _carry_out(self, info: str, fields: dict[str, str]) -> None:
        assert self.component is not None
        authorized = AuthorizedAccounts(self.redis)
        if info == "component_verify_ticket":
            try:
                authorized.set_ticket(fields.get("ComponentVerifyTicket", ""))
            except ValueError as exc:
                raise PushRejected("body", str(exc)) from None
            log.info("push.ticket")
        elif info in ("authorized", "updateauthorized"):
            code = fields.get("AuthorizationCode", "")
            if not code:
                raise PushRejected("body", "no AuthorizationCode")
            appid, refresh = self.component.query_auth(code)
            added = authorize_account(self.redis, appid, refresh, self.queue)
            log.info("push.authorized", account=appid, info_type=info, added=added)
        elif info == "unauthorized":
            appid = fields.get("AuthorizerAppid", "")
            if not appid:
                raise PushRejected("body", "no AuthorizerAppid")
            authorized.remove(appid)
            AccountGate(self.redis, rate=1).pause(
                appid,
                reason="authorization",
                errcode=None,
                until="for",
                ms=AUTHORIZATION_PAUSE_MS,
                message="the account withdrew its authorization (unauthorized push)",
            )
            log.warning("push.unauthorized", account=appid)
        else:
            log.info("push.ignored", info_type=info)

    # -- an account's pushes ------------------------------------------------------------

    def account_push(self, appid: str, query: dict[str, str], body: bytes) -> Answer:
        """A push to ``/v1/wechat/<appid>``: a fan's event."""
        keys, sealed_for = self._account_keys(appid)
        if keys is None:
            return self._count("account", "not_configured", Answer(404, "no push keys"))
        try:
            fields = self._open_account_push(keys, sealed_for, query, body)
        except PushRejected as exc:
            return self._rejected("account", exc)
        event = fields.get("Event", "") if fields.get("MsgType") == "event" else ""
        if event == "unsubscribe":
            openid = fields.get("FromUserName", "")
            dropped = PendingStore(self.redis).drop_fan(appid, openid) if openid else 0
            log.info("push.unsubscribe", account=appid, dropped=dropped)
        return self._count("account", event or "message", Answer(200, SUCCESS))

    def _account_keys(self, appid: str) -> tuple[PushKeys | None, str]:
        """The keys of ``appid``'s pushes, and the AppID its safe-mode pushes name: its own,
        or, authorized to the component, the component's."""
        configured = self.config.get(appid)
        if configured is not None:
            return configured.push, appid
        component = self.config.component
        if component is not None and AuthorizedAccounts(self.redis).refresh_token(appid):
            return component.push, component.appid
        return None, appid

    @staticmethod
    def _open_account_push(
        keys: PushKeys, sealed_for: str, query: dict[str, str], body: bytes
    ) -> dict[str, str]:
        crypto = keys.crypto(sealed_for)
        if query.get("encrypt_type") == "aes":
            if crypto is None:
                raise PushRejected("encryption", "a safe-mode push, and no push_aes_key")
            return crypto.open(query, body)
        timestamp, nonce = query.get("timestamp", ""), query.get("nonce", "")
        check_signature(query.get("signature", ""), keys.token.reveal(), timestamp, nonce)
        check_timestamp(timestamp)
        return parse_xml(body)

    # -- the server URL check (GET with echostr) ------------------------------------------

    def verify_url(self, appid: str | None, query: dict[str, str]) -> Answer:
        """WeChat's check of a server URL: echo ``echostr`` when the signature is right."""
        if appid is None:
            component = self.config.component
            keys = component.push if component is not None else None
        else:
            keys = self._account_keys(appid)[0]
        if keys is None:
            return Answer(404, "no push keys")
        try:
            check_signature(
                query.get("signature", ""),
                keys.token.reveal(),
                query.get("timestamp", ""),
                query.get("nonce", ""),
            )
        except PushRejected:
            return Answer(403, "signature")
        return Answer(200, query.get("echostr", ""))

    # -- counting ---------------------------------------------------------------------

    def _rejected(self, kind: str, exc: PushRejected) -> Answer:
        log.warning("push.rejected", kind=kind, reason=exc.reason, error=str(exc))
        return self._count(kind, f"rejected_{exc.reason}", Answer(403, exc.reason))

    def _count(self, kind: str, outcome: str, answer: Answer) -> Answer:
        known = outcome in KNOWN or outcome in ("not_configured", "retry")
        known = known or outcome.startswith("rejected_")
        self.redis.hincrby(PUSH_COUNTS, f"{kind}:{outcome if known else 'other'}", 1)
        return answer
