"""The ``/_sim/*`` test endpoints: configure faults, read what happened, drive the component.

Every endpoint takes ``?appid=A`` or ``"appid"`` in its JSON body and means the first app
without it; an appid the platform lacks answers 404. ``appid=*`` means every app at once
for ``stats`` (summed), ``reset`` (the component's state too) and ``expire_tokens``.
The component's endpoints (``ticket``, ``authorize``, ``unauthorize``, ``component``)
answer 404 when no component is configured.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fakewechat.platform import NoComponent, Platform, UnknownApp
from fakewechat.simulator import ConfigError, Simulator

#: The appid that names every app at once.
ALL_APPS = "*"
#: Endpoints that change something answer POST only.
POST_ONLY = frozenset(
    {"/_sim/reset", "/_sim/expire_tokens", "/_sim/members", "/_sim/authorize", "/_sim/unauthorize"}
)

Document = dict[str, Any]


def answer(
    platform: Platform, method: str, path: str, query: dict[str, str], body: Any
) -> tuple[int, Document]:
    """The HTTP status and JSON document of one test endpoint call."""
    if not isinstance(body, dict):
        return 400, {"error": "body must be a JSON object"}
    # The body's appid names the app, it is not a setting (configure would refuse it).
    appid: Any = query.get("appid", body.pop("appid", None))
    if appid is not None and not isinstance(appid, str):
        return 400, {"error": "appid must be a string"}
    unknown = (404, {"error": f"unknown test endpoint {method} {path}"})
    if path in POST_ONLY and method != "POST":
        return unknown
    try:
        if path in _COMPONENT_ENDPOINTS:
            return 200, _COMPONENT_ENDPOINTS[path](platform, appid)
        if appid == ALL_APPS:
            if path not in _ALL_APPS_ENDPOINTS:
                return 400, {"error": f"appid=* works for {', '.join(_ALL_APPS_ENDPOINTS)} only"}
            return 200, _ALL_APPS_ENDPOINTS[path](platform)
        if path not in _APP_ENDPOINTS:
            return unknown
        return 200, _APP_ENDPOINTS[path](platform.app(appid), method, query, body)
    except (UnknownApp, NoComponent) as exc:
        return 404, {"error": str(exc)}
    except (ConfigError, ValueError, TypeError) as exc:
        return 400, {"error": str(exc)}
    except KeyError as exc:
        return 404, {"error": f"no tag {exc}"}


# -- one app's endpoints ------------------------------------------------------------------


def _config(app: Simulator, method: str, query: dict[str, str], body: Document) -> Document:
    return app.configure(body) if method == "POST" else app.config.document()


def _reset(app: Simulator, method: str, query: dict[str, str], body: Document) -> Document:
    app.reset()
    return {"ok": True}


def _expire_tokens(app: Simulator, method: str, query: dict[str, str], body: Document) -> Document:
    app.expire_tokens()
    return {"ok": True}


def _fans(app: Simulator, method: str, query: dict[str, str], body: Document) -> Document:
    if method == "GET":
        offset = max(0, int(query.get("offset", 0)))
        limit = min(100_000, max(0, int(query.get("limit", 1000))))
        return {"total": app.fans.total, "openids": app.fans.page(offset, limit)}
    if body.get("foreign"):
        return {"openids": app.fans.foreign(int(body.get("count", 0)))}
    if "openids" in body:
        if not isinstance(body["openids"], list):
            raise ValueError("openids must be a list")
        return {"openids": app.fans.add_openids(body["openids"])}
    return {"openids": app.fans.add_count(int(body.get("count", 0)))}


def _members(app: Simulator, method: str, query: dict[str, str], body: Document) -> Document:
    """`POST /_sim/members {"tagid", "count"|"openids"}`: tag fans directly (bulk set-up)."""
    if "openids" in body:
        openids = list(body["openids"])
        bad = [o for o in openids if not app.fans.is_fan(o)]
        if bad:
            raise ValueError(f"{len(bad)} openids are not fans")
    else:
        count = int(body.get("count", 0))
        if count > app.fans.total:
            raise ValueError(f"only {app.fans.total} fans")
        openids = app.fans.page(0, count)
    return {"count": app.seed_members(int(body["tagid"]), openids)}


_APP_ENDPOINTS: dict[str, Callable[[Simulator, str, dict[str, str], Document], Document]] = {
    "/_sim/stats": lambda app, *_: app.stats(),
    "/_sim/state": lambda app, *_: app.state(),
    "/_sim/log": lambda app, *_: app.batch_log(),
    "/_sim/config": _config,
    "/_sim/reset": _reset,
    "/_sim/expire_tokens": _expire_tokens,
    "/_sim/fans": _fans,
    "/_sim/members": _members,
}


# -- every app at once (appid=*) ----------------------------------------------------------


def _reset_all(platform: Platform) -> Document:
    platform.reset()
    return {"ok": True}


def _expire_all(platform: Platform) -> Document:
    platform.expire_tokens()
    return {"ok": True}


_ALL_APPS_ENDPOINTS: dict[str, Callable[[Platform], Document]] = {
    "/_sim/stats": lambda platform: platform.stats(),
    "/_sim/reset": _reset_all,
    "/_sim/expire_tokens": _expire_all,
}


# -- the component ------------------------------------------------------------------------


def _unauthorize(platform: Platform, appid: str | None) -> Document:
    return {"ok": True, "revoked_tokens": platform.unauthorize(appid)}


_COMPONENT_ENDPOINTS: dict[str, Callable[[Platform, str | None], Document]] = {
    "/_sim/ticket": lambda platform, _: {
        "component_verify_ticket": platform.require_component().issue_ticket()
    },
    "/_sim/authorize": lambda platform, appid: {
        "authorizer_refresh_token": platform.authorize(appid)
    },
    "/_sim/unauthorize": _unauthorize,
    "/_sim/component": lambda platform, _: platform.require_component().document(),
}
