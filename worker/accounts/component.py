"""Tokens through a WeChat Open Platform third-party platform (the "component").

WeChat pushes a ``component_verify_ticket`` every ten minutes (``tagsync component ticket``
hands it over); with it, ``api_component_token`` gives the component's own token, and with
that, ``api_authorizer_token`` gives each authorized account's access token from the
account's refresh token. Both tokens are shared by every process through Redis, fetched by
one at a time, exactly like an Official Account's own tokens (``worker.wechat.tokens``).

A refresh token WeChat rotates is stored before the access token that came with it is
used: a worker killed after that write loses nothing, and one killed before it still holds
the replaced token, which WeChat honours for a while (and ``previous`` keeps it too).
"""

from __future__ import annotations

from typing import Any

import structlog
from redis import Redis

from worker.accounts.authorized import AuthorizedAccounts
from worker.accounts.config import ComponentConfig
from worker.observability.redaction import REDACTOR
from worker.wechat.client import Pool, WeChatClient
from worker.wechat.errors import NetworkError, TokenError, TokenRefused, WeChatError
from worker.wechat.tokens import Fetcher, TokenProvider

log = structlog.get_logger("tagsync.component")

COMPONENT_TOKEN = "component/api_component_token"
AUTHORIZER_TOKEN = "component/api_authorizer_token"
QUERY_AUTH = "component/api_query_auth"


class Component:
    """The component's token and its authorized accounts' token fetchers."""

    def __init__(
        self,
        config: ComponentConfig,
        *,
        redis: Redis,
        api_base: str,
        session: Pool | None = None,
        read_timeout: float = 10.0,
    ) -> None:
        self.config = config
        self.authorized = AuthorizedAccounts(redis)
        # The component's own client: its token is the component_access_token, fetched
        # with the ticket (its key, ``tagsync:{component appid}:token``, is no account's).
        self._transport = WeChatClient(
            appid=config.appid,
            secret=config.secret,
            api_base=api_base,
            redis=redis,
            session=session,
            read_timeout=read_timeout,
            fetch=self._fetch_component_token,
        )
        self.tokens: TokenProvider = self._transport.tokens

    def __repr__(self) -> str:
        return f"Component(appid={self.config.appid!r})"

    def _fetch_component_token(self, force_refresh: bool) -> tuple[str, int]:
        ticket = self.authorized.ticket()
        if ticket is None:
            raise TokenRefused(
                COMPONENT_TOKEN,
                61006,
                "no component_verify_ticket yet: run `tagsync component ticket`",
            )
        body = {
            "component_appid": self.config.appid,
            "component_appsecret": self.config.secret.reveal(),
            "component_verify_ticket": ticket[0],
        }
        try:
            answer = self._transport.send(COMPONENT_TOKEN, "POST", body, params={})
        except WeChatError as exc:
            if exc.errcode is None or exc.errcode == -1:
                raise
            raise TokenRefused(exc.call, exc.errcode, exc.errmsg) from None
        token, expires_in = _token_of(answer, "component_access_token")
        log.info("component.token_fetched", component=self.config.appid)
        return token, expires_in

    def authorizer_fetcher(self, appid: str) -> Fetcher:
        """The token fetch of authorized account ``appid``."""

        def fetch(force_refresh: bool) -> tuple[str, int]:
            return self._fetch_authorizer_token(appid)

        return fetch

    def _fetch_authorizer_token(self, appid: str) -> tuple[str, int]:
        refresh = self.authorized.refresh_token(appid)
        if refresh is None:
            raise TokenRefused(
                AUTHORIZER_TOKEN, 61023, "no refresh token: the account is not authorized"
            )
        body = {
            "component_appid": self.config.appid,
            "authorizer_appid": appid,
            "authorizer_refresh_token": refresh,
        }
        answer = self._with_component_token(AUTHORIZER_TOKEN, body)
        token, expires_in = _token_of(answer, "authorizer_access_token")
        rotated = answer.get("authorizer_refresh_token")
        if isinstance(rotated, str) and rotated and rotated != refresh:
            # Stored before the access token is used or even returned: never lost to a crash.
            self.authorized.rotate(appid, new=rotated, old=refresh)
            log.info("component.refresh_token_rotated", account=appid)
        return token, expires_in

    def query_auth(self, code: str) -> tuple[str, str]:
        """Trade an authorization code (pushed with ``authorized``) for the account's
        AppID and refresh token (``api_query_auth``)."""
        body = {"component_appid": self.config.appid, "authorization_code": code}
        answer = self._with_component_token(QUERY_AUTH, body)
        info = answer.get("authorization_info")
        appid = info.get("authorizer_appid") if isinstance(info, dict) else None
        refresh = info.get("authorizer_refresh_token") if isinstance(info, dict) else None
        if not isinstance(appid, str) or not isinstance(refresh, str) or not refresh:
            raise NetworkError(QUERY_AUTH, None, "answer lacks the authorization")
        REDACTOR.add(refresh)
        return appid, refresh

    def _with_component_token(self, call: str, body: dict[str, Any]) -> dict[str, Any]:
        """A component call with its token; a refused token is dropped and fetched anew once."""
        for _ in range(2):
            component_token = self.tokens.token()
            try:
                return self._transport.send(
                    call, "POST", body, params={"component_access_token": component_token}
                )
            except TokenError:
                # The component's token was refused: drop it (if still stored), fetch anew.
                self.tokens.invalidate(component_token)
            except WeChatError as exc:
                if exc.errcode is None or exc.errcode == -1:
                    raise
                raise TokenRefused(exc.call, exc.errcode, exc.errmsg) from None
        raise NetworkError(call, None, "the component token was refused twice")


def _token_of(answer: dict[str, Any], name: str) -> tuple[str, int]:
    try:
        token = str(answer[name])
        expires_in = int(answer.get("expires_in", 7200))
    except (KeyError, TypeError, ValueError):
        raise NetworkError(name, None, "garbled token answer") from None
    REDACTOR.add(token)
    return token, expires_in
