"""Several apps on one simulated WeChat, and optionally a third-party platform (component).

``Platform.call`` routes a call to ``/cgi-bin/<path>`` the way WeChat tells accounts apart:
a token fetch by the ``appid`` it names, a component call to the component, and every
other call by the app that issued its ``access_token`` (a token->appid map, filled as
tokens are issued, keeps that O(1)). Each app keeps its own lock, so one app's slow
answers never hold up another's.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from typing import Any

from fakewechat.component import (
    AUTHORIZER_TOKEN_PATH,
    COMPONENT_TOKEN_PATH,
    QUERY_AUTH_PATH,
    Component,
)
from fakewechat.errors import error
from fakewechat.pushes import Pusher
from fakewechat.simulator import TOKEN_PATHS, Answer, Simulator
from fakewechat.stats import merged

__all__ = ["NoComponent", "Platform", "UnknownApp"]

#: The token->appid map is swept of tokens their app forgot when it doubles past this.
MIN_OWNERS_SWEEP = 1024


class UnknownApp(LookupError):
    """An appid that is not an app of the platform."""


class NoComponent(LookupError):
    """A component call or endpoint on a platform without a component."""


class Platform:
    """The apps (``appid -> Simulator``, the first one the default) and an optional component."""

    def __init__(
        self,
        apps: Iterable[Simulator],
        *,
        component: Component | None = None,
        pusher: Pusher | None = None,
    ) -> None:
        self.apps: dict[str, Simulator] = {}
        for app in apps:
            if app.appid in self.apps:
                raise ValueError(f"app {app.appid} is given twice")
            self.apps[app.appid] = app
        if not self.apps:
            raise ValueError("a platform needs at least one app")
        if component is not None and component.appid in self.apps:
            raise ValueError(f"{component.appid} is both an app and the component")
        self.component = component
        #: Sends WeChat's pushes (``fakewechat --push-url``); None: nothing is pushed.
        self.pusher = pusher
        self.default = next(iter(self.apps.values()))
        self._lock = threading.Lock()
        #: access token -> the appid that issued it
        self._owners: dict[str, str] = {}
        self._sweep_at = MIN_OWNERS_SWEEP

    def __repr__(self) -> str:
        return f"Platform(apps={len(self.apps)}, component={self.component!r})"

    def app(self, appid: str | None = None) -> Simulator:
        """The app ``appid`` (the default app for None); ``UnknownApp`` if there is none."""
        if appid is None:
            return self.default
        try:
            return self.apps[appid]
        except KeyError:
            raise UnknownApp(f"no app {appid}") from None

    def require_component(self) -> Component:
        """The component; ``NoComponent`` if the platform has none."""
        if self.component is None:
            raise NoComponent("no component is configured (fakewechat --component APPID:SECRET)")
        return self.component

    # -- the API ----------------------------------------------------------------------

    def call(self, path: str, method: str, query: dict[str, str], body: Any) -> Answer:
        """Answer one call to ``/cgi-bin/<path>`` as WeChat would, from the app it is for."""
        if path in TOKEN_PATHS:
            params = query if path == "token" else body
            named = params.get("appid") if isinstance(params, dict) else None
            # An appid no app has reaches the default app, which answers 40013 for it.
            app = self.apps.get(named, self.default) if isinstance(named, str) else self.default
            answer = app.call(path, method, query, body)
            self._remember(answer.body.get("access_token"), app.appid)
        elif path == COMPONENT_TOKEN_PATH:
            if self.component is None:
                return Answer(200, error(40013, "no component is configured"))
            return self.component.component_token(body)
        elif path == AUTHORIZER_TOKEN_PATH:
            return self._authorizer_token(query, body)
        elif path == QUERY_AUTH_PATH:
            if self.component is None:
                return Answer(200, error(40001, "no component is configured"))
            answer = self.component.query_auth(query, body, self.apps)
            info = answer.body.get("authorization_info", {})
            self._remember(info.get("authorizer_access_token"), info.get("authorizer_appid", ""))
            return answer
        else:
            app = self._owner(query.get("access_token"))
            answer = app.call(path, method, query, body)
        answer.appid = app.appid
        return answer

    def done(self, answer: Answer) -> None:
        """Mark the call of ``answer`` as answered by its app (its latency has passed)."""
        if answer.appid is not None:
            self.apps[answer.appid].done(answer)

    def _authorizer_token(self, query: dict[str, str], body: Any) -> Answer:
        if self.component is None:
            return Answer(200, error(40001, "no component is configured"))
        named = body.get("authorizer_appid") if isinstance(body, dict) else None
        app = self.apps.get(named) if isinstance(named, str) else None
        answer = self.component.authorizer_token(query, body, app)
        if app is not None:
            self._remember(answer.body.get("authorizer_access_token"), app.appid)
        return answer

    def _owner(self, token: str | None) -> Simulator:
        """The app that issued ``token``; the default app (which answers 40001) for others."""
        if not token:
            return self.default
        with self._lock:
            appid = self._owners.get(token)
        return self.apps[appid] if appid is not None else self.default

    def _remember(self, token: Any, appid: str) -> None:
        if not isinstance(token, str):
            return
        with self._lock:
            self._owners[token] = appid
            if len(self._owners) >= self._sweep_at:
                # Amortised O(1): a sweep at every doubling drops the tokens apps forgot.
                self._owners = {
                    t: a for t, a in self._owners.items() if self.apps[a].knows_token(t)
                }
                self._sweep_at = max(MIN_OWNERS_SWEEP, 2 * len(self._owners))

    # -- test endpoints over every app --------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """``/_sim/stats?appid=*``: every app's stats summed, plus ``"apps": n``.

        ``max_calls_in_any_second`` is the largest of the apps' (their busiest seconds may
        differ, so it is a lower bound of the platform's); ``first_batch_at`` the earliest
        and ``last_batch_at`` the latest.
        """
        return merged([app.stats() for app in self.apps.values()])

    def reset(self) -> None:
        """Reset every app and the component's tickets, tokens and authorizations."""
        for app in self.apps.values():
            app.reset()
        if self.component is not None:
            self.component.reset()
        with self._lock:
            self._owners = {}
            self._sweep_at = MIN_OWNERS_SWEEP

    def expire_tokens(self) -> None:
        """Expire every token of every app, and the component's tokens."""
        for app in self.apps.values():
            app.expire_tokens()
        if self.component is not None:
            self.component.expire_tokens()

    # -- the component's test endpoints -------------------------------------------------

    def authorize(self, appid: str | None) -> dict[str, Any]:
        """App ``appid`` authorizes the component: its new refresh token and authorization
        code; with a pusher, the ``authorized`` push and what the server answered."""
        app = self.app(appid)
        refresh_token, code = self.require_component().authorize(app)
        document: dict[str, Any] = {
            "authorizer_refresh_token": refresh_token,
            "authorization_code": code,
        }
        if self.pusher is not None:
            document["push"] = self.pusher.component(
                "authorized",
                {
                    "AuthorizerAppid": app.appid,
                    "AuthorizationCode": code,
                    "AuthorizationCodeExpiredTime": str(int(time.time()) + 3600),
                },
            )
        return document

    def unauthorize(self, appid: str | None) -> dict[str, Any]:
        """App ``appid`` withdraws its authorization: how many access tokens were revoked;
        with a pusher, the ``unauthorized`` push and what the server answered."""
        app = self.app(appid)
        document: dict[str, Any] = {
            "ok": True,
            "revoked_tokens": self.require_component().unauthorize(app),
        }
        if self.pusher is not None:
            document["push"] = self.pusher.component("unauthorized", {"AuthorizerAppid": app.appid})
        return document

    def push(self, appid: str | None, body: dict[str, Any]) -> dict[str, Any]:
        """``/_sim/push``: push ``{"event": E, "openid": O}`` of app ``appid`` now, or a
        component push (``{"info_type": "component_verify_ticket"}``, a fresh ticket)."""
        if self.pusher is None:
            raise NoComponent("no push URL is configured (fakewechat --push-url URL)")
        if body.get("info_type") == "component_verify_ticket":
            ticket = self.require_component().issue_ticket()
            answer = self.pusher.component(
                "component_verify_ticket", {"ComponentVerifyTicket": ticket}
            )
            return {"component_verify_ticket": ticket, "push": answer}
        event, openid = body.get("event"), body.get("openid")
        if not isinstance(event, str) or not isinstance(openid, str):
            raise ValueError('give {"event": "unsubscribe", "openid": "..."} or an info_type')
        app = self.app(appid)
        sealed = self.component is not None and self.component.is_authorized(app.appid)
        return {"push": self.pusher.account_event(app.appid, event, openid, sealed=sealed)}
