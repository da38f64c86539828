"""A WeChat Open Platform third-party platform (a "component") and the apps that authorized it.

WeChat pushes the component a verify ticket every 10 minutes (here ``/_sim/ticket`` hands
one out). With a ticket and its secret the component fetches its own token
(``component/api_component_token``); with that token and an app's refresh token (given when
the app authorized the component, here ``/_sim/authorize``) it fetches an access token of
that app (``component/api_authorizer_token``), issued by the app's own ``TokenBook`` so that
it works for every call of the app.

With the authorizer app's ``rotate_refresh_token`` every successful answer replaces the
current refresh token, also when it was called with a replaced one still in its grace.

Errcodes, WeChat's: 47001 a body that is not a JSON object; 40013 a wrong
``component_appid``; 40125 a wrong ``component_appsecret``; 61006 a ticket the component
was never given, 61005 one older than 12 hours; 41001 a missing component token, 40001
a bad or expired one (WeChat may word an expired one 42001; tagsync treats both as a token
error); 61003 an app that has not authorized the component (or is not an app of the
platform); 61023 a refresh token that is wrong, revoked or past its grace.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from fakewechat.errors import error
from fakewechat.simulator import Answer, Simulator
from fakewechat.tokens import TokenBook

#: The component's own token call.
COMPONENT_TOKEN_PATH = "component/api_component_token"
#: The call that fetches an access token of an app that authorized the component.
AUTHORIZER_TOKEN_PATH = "component/api_authorizer_token"
#: The call that trades an authorization code (pushed with ``authorized``) for the app's
#: refresh token.
QUERY_AUTH_PATH = "component/api_query_auth"
#: All three: like `token` and `stable_token` they are outside the per-second limit.
COMPONENT_PATHS = frozenset({COMPONENT_TOKEN_PATH, AUTHORIZER_TOKEN_PATH, QUERY_AUTH_PATH})
#: How long an authorization code can be traded, s (WeChat's: an hour).
AUTH_CODE_TTL_S = 3600.0
#: How long a verify ticket stays valid, in seconds (WeChat pushes one every 10 minutes).
TICKET_TTL_S = 12 * 3600.0
#: How long a component access token lives, in seconds (WeChat's 2 hours).
COMPONENT_TOKEN_TTL_S = 7200.0


@dataclass
class Authorization:
    """An app's authorization of the component: its refresh tokens and what they fetched."""

    refresh_token: str
    #: Replaced refresh tokens that still work: token -> until (monotonic seconds).
    retired: dict[str, float] = field(default_factory=dict)
    #: Access tokens issued for the app through the component (revoked with the authorization).
    access_tokens: list[str] = field(default_factory=list)

    def accepts(self, refresh_token: Any, now: float) -> bool:
        """True if ``refresh_token`` is the current one or a replaced one within its grace."""
        if not isinstance(refresh_token, str):
            return False
        return refresh_token == self.refresh_token or self.retired.get(refresh_token, 0.0) > now


class Component:
    """A third-party platform: its tickets, its tokens, and the apps that authorized it.

    Its lock guards its own maps; it is taken before an app's lock, never after, so a
    component call may ask the app for a token while it holds its own.
    """

    def __init__(self, *, appid: str, secret: str, ticket_ttl_s: float = TICKET_TTL_S) -> None:
        self.appid = appid
        self._secret = secret
        self._ticket_ttl_s = ticket_ttl_s
        self._lock = threading.Lock()
        self.reset()

    def __repr__(self) -> str:
        return f"Component(appid={self.appid!r})"

    # -- test endpoints ---------------------------------------------------------------

    def reset(self) -> None:
        """Forget tickets, tokens, authorizations and counts."""
        with self._lock:
            #: ticket -> when it was issued (monotonic seconds)
            self._tickets: dict[str, float] = {}
            self.tokens = TokenBook()
            self._authorizations: dict[str, Authorization] = {}
            #: authorization code -> (appid, issued at, monotonic seconds)
            self._codes: dict[str, tuple[str, float]] = {}
            self._calls: Counter[str] = Counter()
            self._errcodes: Counter[str] = Counter()
            self._authorizer_fetches: Counter[str] = Counter()

    def issue_ticket(self) -> str:
        """A new verify ticket, valid 12 hours; older tickets stay valid until their own end."""
        now = time.monotonic()
        ticket = "ticket@@@" + secrets.token_urlsafe(48)
        with self._lock:
            # Expired tickets are kept a while longer so that they answer 61005, not 61006.
            self._tickets = {
                t: at for t, at in self._tickets.items() if now - at < 2 * self._ticket_ttl_s
            }
            self._tickets[ticket] = now
        return ticket

    def authorize(self, app: Simulator) -> tuple[str, str]:
        """``app`` authorizes the component: a new refresh token (any older one stops
        working), and an authorization code that ``api_query_auth`` trades for it."""
        refresh_token = _refresh_token()
        code = "queryauthcode@@@" + secrets.token_urlsafe(32)
        with self._lock:
            self._codes[code] = (app.appid, time.monotonic())
            authorization = self._authorizations.get(app.appid)
            if authorization is None:
                self._authorizations[app.appid] = Authorization(refresh_token)
            else:
                authorization.refresh_token = refresh_token
                authorization.retired.clear()
        return refresh_token, code

    def unauthorize(self, app: Simulator) -> int:
        """``app`` withdraws: its refresh tokens and every token fetched with them stop working.

        Returns how many access tokens were revoked (0 if the app had not authorized).
        """
        with self._lock:
            authorization = self._authorizations.pop(app.appid, None)
            if authorization is None:
                return 0
            return app.revoke_tokens(authorization.access_tokens)

    def is_authorized(self, appid: str) -> bool:
        """Has ``appid`` authorized the component (and not withdrawn)?"""
        with self._lock:
            return appid in self._authorizations

    def expire_tokens(self) -> None:
        """Every component access token expires now."""
        with self._lock:
            self.tokens.expire_all()

    def document(self) -> dict[str, Any]:
        """The ``/_sim/component`` document."""
        with self._lock:
            return {
                "appid": self.appid,
                "authorized": list(self._authorizations),
                "component_token_fetches": self.tokens.fetches,
                "authorizer_token_fetches": dict(self._authorizer_fetches),
                "calls": dict(self._calls),
                "errcodes": dict(self._errcodes),
            }

    # -- the API ----------------------------------------------------------------------

    def component_token(self, body: Any) -> Answer:
        """Answer ``component/api_component_token`` as WeChat would."""
        with self._lock:
            self._calls[COMPONENT_TOKEN_PATH] += 1
            answer = self._component_token(body)
            self._errcodes[str(answer.get("errcode", 0))] += 1
        return Answer(200, answer)

    def authorizer_token(self, query: dict[str, str], body: Any, app: Simulator | None) -> Answer:
        """Answer ``component/api_authorizer_token`` for ``app`` (None: not an app of ours).

        The call also counts in the app's own stats, its token in the app's token fetches.
        """
        with self._lock:
            self._calls[AUTHORIZER_TOKEN_PATH] += 1
            answer = self._authorizer_token(query, body, app)
            code = answer.get("errcode", 0)
            self._errcodes[str(code)] += 1
            if app is not None:
                app.record_call(AUTHORIZER_TOKEN_PATH, body, code)
        # The app's latency applies: the call is carried out (a refresh token rotated) before
        # the answer arrives, as a client killed while it waits would find.
        return Answer(200, answer, delay_s=app.latency_s() if app is not None else 0.0)

    def query_auth(self, query: dict[str, str], body: Any, apps: dict[str, Simulator]) -> Answer:
        """Answer ``component/api_query_auth``: an authorization code for the app's tokens."""
        with self._lock:
            self._calls[QUERY_AUTH_PATH] += 1
            answer = self._query_auth(query, body, apps)
            self._errcodes[str(answer.get("errcode", 0))] += 1
        return Answer(200, answer)

    def _refused(self, query: dict[str, str], body: Any) -> dict[str, Any] | None:
        """What WeChat answers a component call with a bad component token, a body that is
        not an object or another component's AppID; None for a good call."""
        token_error = self.tokens.check(query.get("component_access_token"))
        if token_error:
            return error(41001 if token_error == 41001 else 40001)
        if not isinstance(body, dict):
            return error(47001)
        if body.get("component_appid") != self.appid:
            return error(40013)
        return None

    def _query_auth(
        self, query: dict[str, str], body: Any, apps: dict[str, Simulator]
    ) -> dict[str, Any]:
        refused = self._refused(query, body)
        if refused is not None:
            return refused
        code = body.get("authorization_code")
        found = self._codes.pop(code, None) if isinstance(code, str) else None
        if found is None or time.monotonic() - found[1] > AUTH_CODE_TTL_S:
            return error(61010, "authorization code is invalid or expired")
        appid = found[0]
        authorization, app = self._authorizations.get(appid), apps.get(appid)
        if authorization is None or app is None:
            return error(61003)
        token, ttl = app.issue_authorizer_token()
        authorization.access_tokens.append(token)
        return {
            "authorization_info": {
                "authorizer_appid": appid,
                "authorizer_access_token": token,
                "expires_in": ttl,
                "authorizer_refresh_token": authorization.refresh_token,
                "func_info": [],
            }
        }

    def _component_token(self, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            return error(47001)
        if body.get("component_appid") != self.appid:
            return error(40013)
        if body.get("component_appsecret") != self._secret:
            return error(40125)
        ticket = body.get("component_verify_ticket")
        issued_at = self._tickets.get(ticket) if isinstance(ticket, str) else None
        if issued_at is None:
            return error(61006)
        if time.monotonic() - issued_at >= self._ticket_ttl_s:
            return error(61005)
        self.tokens.fetches += 1
        token, ttl = self.tokens.issue(COMPONENT_TOKEN_TTL_S)
        return {"component_access_token": token, "expires_in": int(ttl)}

    def _authorizer_token(
        self, query: dict[str, str], body: Any, app: Simulator | None
    ) -> dict[str, Any]:
        refused = self._refused(query, body)
        if refused is not None:
            return refused
        authorization = self._authorizations.get(app.appid) if app is not None else None
        if app is None or authorization is None:
            return error(61003)
        now = time.monotonic()
        if not authorization.accepts(body.get("authorizer_refresh_token"), now):
            return error(61023)
        config = app.config
        forced = config.forced_errcodes.get(AUTHORIZER_TOKEN_PATH)
        if forced is not None:
            return error(int(forced))
        token, ttl = app.issue_authorizer_token()
        self._authorizer_fetches[app.appid] += 1
        # Only tokens the app still knows can be revoked; the rest are dead already.
        kept = [t for t in authorization.access_tokens if app.knows_token(t)]
        authorization.access_tokens = [*kept, token]
        if config.rotate_refresh_token:
            authorization.retired = {
                t: until for t, until in authorization.retired.items() if until > now
            }
            authorization.retired[authorization.refresh_token] = now + float(
                config.refresh_token_grace_s
            )
            authorization.refresh_token = _refresh_token()
        return {
            "authorizer_access_token": token,
            "expires_in": ttl,
            "authorizer_refresh_token": authorization.refresh_token,
        }


def _refresh_token() -> str:
    """A refresh token shaped like WeChat's."""
    return "refreshtoken@@@" + secrets.token_urlsafe(32)
