"""The ingest server of a deployment: ``POST /v1/intents`` (``producers.wsgi``) plus the
Open Platform endpoints, behind the same bearer token.

    POST /v1/accounts          {"appid": A, "refresh_token": R}
        201 {"appid": A, "added": true} (200 with "added": false: a renewed authorization)
    GET  /v1/accounts          200 {"accounts": [{"appid", "authorized_at"}]} (no tokens)
    POST /v1/component/ticket  {"ticket": T}   200 {"ok": true}
        400 for a bad body, 401 without the token, 409 without a [component]

An operator's controls, for any account served (404 for another):

    POST   /v1/accounts/A/pause   {"tag": T?, "reason": "..."?}  200 {"paused": true}
    POST   /v1/accounts/A/resume  {"tag": T?}                    200 {"resumed": bool}
    GET    /v1/accounts/A/limits                                 200 {"limits": {...} | null}
    POST   /v1/accounts/A/limits  {"rate"?, "burst"?, "daily_budget"?}  200 {"limits": {...}}
    DELETE /v1/accounts/A/limits                                 200 {"cleared": bool}

Production: ``gunicorn worker.http:app`` (the Procfile's ``ingest``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any
from urllib.parse import parse_qs

import redis

from producers.redis_url import connect
from producers.wsgi import (
    BodyError,
    IngestApp,
    StartResponse,
    busy,
    read_json,
    reply,
    reply_text,
    unauthorized,
)
from worker.accounts import accounts_config, controls
from worker.accounts.authorize import authorize_account
from worker.accounts.authorized import AuthorizedAccounts
from worker.accounts.component import Component
from worker.accounts.config import APPID_RE
from worker.accounts.pushes import Pushes
from worker.base.settings import Settings
from worker.queues import queue_connection
from worker.wechat.push import MAX_PUSH_BYTES

#: Largest body of an account request, in bytes.
MAX_ACCOUNT_BODY = 16 * 1024
#: Where WeChat's pushes arrive: ``component`` or an AppID follows.
WECHAT_PREFIX = "/v1/wechat/"
#: An operator's controls: ``/v1/accounts/<appid>/<control>``.
CONTROLS = {"pause": ("POST",), "resume": ("POST",), "limits": ("GET", "POST", "DELETE")}
#: Longest reason of a pause, in characters (the rest is cut).
MAX_REASON = 200


class DeploymentApp:
    """``IngestApp`` with the account endpoints of an Open Platform deployment."""

    def __init__(self, token: str | None = None, *, settings: Settings | None = None) -> None:
        self.ingest = IngestApp(token)
        self._settings = settings
        self._redis: redis.Redis | None = None
        #: The queue's Redis: ``_redis`` itself unless ``TAGSYNC_QUEUE_URL`` names another.
        self._queue: redis.Redis | None = None
        #: Read from the accounts file at the first account request (as workers read it once).
        self._has_component: bool | None = None
        self._push_handler: Pushes | None = None

    def __repr__(self) -> str:
        return "DeploymentApp(token=***)"

    def _parts(self) -> tuple[bool, redis.Redis | None]:
        """Is a component configured, and the Redis of the authorizations."""
        settings = self._settings or Settings.from_env()
        if self._redis is None and settings.redis_url:
            self._redis = connect(settings.redis_url)
            self._queue = queue_connection(settings, self._redis)
        if self._has_component is None:
            try:
                self._has_component = accounts_config(settings).component is not None
            except ValueError:  # no accounts file and no WECHAT_APPID on this host
                self._has_component = False
        return self._has_component, self._redis

    def _pushes(self) -> Pushes | None:
        """What carries out WeChat's pushes, built at the first one (None without Redis)."""
        if self._push_handler is None:
            settings = self._settings or Settings.from_env()
            _, connection = self._parts()
            if connection is None:
                return None
            try:
                config = accounts_config(settings)
            except ValueError:
                return None
            component = None
            if config.component is not None:
                component = Component(
                    config.component, redis=connection, api_base=settings.api_base
                )
            self._push_handler = Pushes(
                config, redis=connection, component=component, queue=self._queue
            )
        return self._push_handler

    def _push(
        self, environ: dict[str, Any], start_response: StartResponse, target: str, method: str
    ) -> list[bytes]:
        """``/v1/wechat/component`` and ``/v1/wechat/<appid>``: WeChat's pushes (POST) and
        its check of the server URL (GET). Signed by WeChat, not by the bearer token."""
        if target != "component" and not APPID_RE.fullmatch(target):
            return reply_text(start_response, 404, "not found")
        if method not in ("GET", "POST"):
            return reply_text(start_response, 405, "use GET or POST", ("Allow", "GET, POST"))
        query = {k: v[-1] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
        appid = None if target == "component" else target
        try:
            pushes = self._pushes()
            if pushes is None:
                return reply_text(start_response, 404, "no push keys configured")
            if method == "GET":
                answer = pushes.verify_url(appid, query)
            else:
                length = environ.get("CONTENT_LENGTH") or ""
                if not length.isdigit():
                    return reply_text(start_response, 411, "Content-Length required")
                if int(length) > MAX_PUSH_BYTES:
                    return reply_text(start_response, 413, "too large")
                body = environ["wsgi.input"].read(int(length))
                if appid is None:
                    answer = pushes.component_push(query, body)
                else:
                    answer = pushes.account_push(appid, query, body)
        except (redis.RedisError, OSError):
            return reply_text(start_response, 503, "try again")
        return reply_text(start_response, answer.status, answer.body)

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path, method = environ.get("PATH_INFO", ""), environ.get("REQUEST_METHOD", "GET")
        if path.startswith(WECHAT_PREFIX):
            return self._push(environ, start_response, path[len(WECHAT_PREFIX) :], method)
        if path.startswith("/v1/accounts/"):
            return self._control(environ, start_response, path.split("/")[3:], method)
        if path not in ("/v1/accounts", "/v1/component/ticket"):
            return self.ingest(environ, start_response)
        allowed = "GET, POST" if path == "/v1/accounts" else "POST"
        if method not in allowed.split(", "):
            return reply(start_response, 405, {"error": f"use {allowed}"}, ("Allow", allowed))
        if not self.ingest.authorized(environ):
            return unauthorized(start_response)
        has_component, connection = self._parts()
        if not has_component:
            return reply(start_response, 409, {"error": "no [component] in TAGSYNC_ACCOUNTS"})
        if connection is None:
            return reply(start_response, 503, {"error": "TAGSYNC_REDIS_URL is not set"})
        try:
            if method == "GET":
                listed = [
                    {"appid": a.appid, "authorized_at": a.added}
                    for a in AuthorizedAccounts(connection).list()
                ]
                return reply(start_response, 200, {"accounts": listed})
            document = read_json(environ, MAX_ACCOUNT_BODY)
            if path == "/v1/component/ticket":
                return self._ticket(start_response, connection, document)
            return self._authorize(start_response, connection, document)
        except BodyError as exc:
            return reply(start_response, exc.status, exc.document)
        except (redis.RedisError, OSError):
            return busy(start_response, "Redis cannot take the request now")

    def _ticket(
        self, start_response: StartResponse, connection: redis.Redis, document: Any
    ) -> list[bytes]:
        ticket = document.get("ticket") if isinstance(document, dict) else None
        if not isinstance(ticket, str):
            return reply(start_response, 400, {"error": 'body must be {"ticket": "..."}'})
        try:
            AuthorizedAccounts(connection).set_ticket(ticket)
        except ValueError as exc:
            return reply(start_response, 400, {"error": str(exc)})
        return reply(start_response, 200, {"ok": True})

    def _authorize(
        self, start_response: StartResponse, connection: redis.Redis, document: Any
    ) -> list[bytes]:
        if not isinstance(document, dict):
            return reply(start_response, 400, {"error": 'body must be {"appid", "refresh_token"}'})
        appid, token = document.get("appid"), document.get("refresh_token")
        if not isinstance(appid, str) or not APPID_RE.fullmatch(appid):
            return reply(start_response, 400, {"error": "appid: 1-32 letters, digits, '_' or '-'"})
        if not isinstance(token, str) or not 1 <= len(token) <= 512 or not token.isprintable():
            return reply(
                start_response, 400, {"error": "refresh_token: 1-512 printable characters"}
            )
        added = authorize_account(connection, appid, token, self._queue)
        return reply(start_response, 201 if added else 200, {"appid": appid, "added": added})

    def _control(
        self, environ: dict[str, Any], start_response: StartResponse, parts: list[str], method: str
    ) -> list[bytes]:
        """``/v1/accounts/<appid>/pause|resume|limits``: an operator's controls."""
        if len(parts) != 2 or parts[1] not in CONTROLS or not APPID_RE.fullmatch(parts[0]):
            return reply(start_response, 404, {"error": "not found"})
        appid, control = parts
        allowed = CONTROLS[control]
        if method not in allowed:
            allow = ", ".join(allowed)
            return reply(start_response, 405, {"error": f"use {allow}"}, ("Allow", allow))
        if not self.ingest.authorized(environ):
            return unauthorized(start_response)
        _, connection = self._parts()
        if connection is None:
            return reply(start_response, 503, {"error": "TAGSYNC_REDIS_URL is not set"})
        try:
            if not self._serves(connection, appid):
                return reply(start_response, 404, {"error": f"{appid}: not an account served"})
            document = read_json(environ, MAX_ACCOUNT_BODY) if method == "POST" else {}
            if not isinstance(document, dict):
                return reply(start_response, 400, {"error": "body must be a JSON object"})
            by = f"http {environ.get('REMOTE_ADDR') or 'unknown'}"
            if control == "limits":
                return _limits(start_response, connection, appid, method, document, by)
            tag = document.get("tag")
            if tag is not None and (type(tag) is not int or not 0 <= tag < 2**31):
                return reply(start_response, 400, {"error": "tag: a tag id (an integer)"})
            if control == "resume":
                resumed = controls.resume(connection, appid, tag=tag, queue=self._queue)
                return reply(start_response, 200, {"appid": appid, "tag": tag, "resumed": resumed})
            reason = document.get("reason", "")
            if not isinstance(reason, str) or not reason.isprintable():
                return reply(start_response, 400, {"error": "reason: printable text"})
            controls.pause(connection, appid, tag=tag, reason=reason[:MAX_REASON], by=by)
            return reply(start_response, 200, {"appid": appid, "tag": tag, "paused": True})
        except BodyError as exc:
            return reply(start_response, exc.status, exc.document)
        except (redis.RedisError, OSError):
            return busy(start_response, "Redis cannot take the request now")

    def _serves(self, connection: redis.Redis, appid: str) -> bool:
        """Is ``appid`` an account of this deployment (configured or authorized)?"""
        settings = self._settings or Settings.from_env()
        try:
            if accounts_config(settings).get(appid) is not None:
                return True
        except ValueError:
            pass  # no accounts file on this host: the authorized accounts only
        return appid in AuthorizedAccounts(connection).appids()


def _limits(
    start_response: StartResponse,
    connection: redis.Redis,
    appid: str,
    method: str,
    document: dict[str, Any],
    by: str,
) -> list[bytes]:
    """GET, POST (set some) or DELETE (clear) an account's limits set at run time."""
    if method == "GET":
        found = controls.limits_set(connection, appid)
        return reply(start_response, 200, {"appid": appid, "limits": _limits_json(found)})
    if method == "DELETE":
        cleared = controls.clear_limits(connection, appid)
        return reply(start_response, 200, {"appid": appid, "cleared": cleared})
    unknown = set(document) - {"rate", "burst", "daily_budget"}
    values = {name: document.get(name) for name in ("rate", "burst", "daily_budget")}
    if unknown or not any(v is not None for v in values.values()):
        return reply(start_response, 400, {"error": "body: rate, burst and/or daily_budget"})
    for name, value in values.items():
        number = type(value) in (int, float) if name == "rate" else type(value) is int
        if value is not None and not number:
            return reply(start_response, 400, {"error": f"{name}: a number"})
    try:
        found = controls.set_limits(connection, appid, **values, by=by)
    except ValueError as exc:
        return reply(start_response, 400, {"error": str(exc)})
    return reply(start_response, 200, {"appid": appid, "limits": _limits_json(found)})


def _limits_json(found: controls.LimitsSet | None) -> dict[str, Any] | None:
    return None if found is None else dict(found.__dict__)


#: The app for ``gunicorn worker.http:app``.
app = DeploymentApp()
