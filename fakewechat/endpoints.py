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

from fakewechat.errors import error
from fakewechat.platform import NoComponent, Platform, UnknownApp
from fakewechat.simulator import ConfigError, Simulator, UnknownTag

#: The appid that names every app at once.
ALL_APPS = "*"
#: Endpoints that change something answer POST only.
POST_ONLY = frozenset(
    {
        "/_sim/reset",
        "/_sim/expire_tokens",
        "/_sim/members",
        "/_sim/authorize",
        "/_sim/unauthorize",
        "/_sim/push",
    }
)

Document = dict[str, Any]

#: Most new fans one `/_sim/members {"count"}` adds.
MAX_MEMBERS_COUNT = 2_000_000


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
        if path == "/_sim/push":
            return 200, platform.push(appid, body)
        if path in _COMPONENT_ENDPOINTS:
            return 200, _COMPONENT_ENDPOINTS[path](platform, appid)
        if appid == ALL_APPS:
            if path not in _ALL_APPS_ENDPOINTS:
                return 400, {"error": f"appid=* works for {', '.join(_ALL_APPS_ENDPOINTS)} only"}
            return 200, _ALL_APPS_ENDPOINTS[path](platform)
        if path not in _APP_ENDPOINTS:
            return unknown
        return 200, _APP_ENDPOINTS[path](platform.app(appid), method, query, body)
    except UnknownTag as exc:
        # WeChat's own answer for a tag that does not exist, and the test endpoints' "error".
        return 400, {**error(45159, str(exc)), "error": str(exc)}
    except (UnknownApp, NoComponent) as exc:
        return 404, {"error": str(exc)}
    except (ConfigError, ValueError, TypeError) as exc:
        return 400, {"error": str(exc)}


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
    """`POST /_sim/members`: make a tag big fast, without API calls (nothing is counted).

    - ``{"tag_id": I, "count": N}``: N new fans (the fan sequence continues, as with
      ``/_sim/fans {"count": N}``), all tagged I -> ``{"added": N, "count": fans of I}``.
    - ``{"tag_id": I, "openids": [...]}``: tag those (unknown ones become fans first);
      a fan that would go over ``max_tags_per_fan`` is skipped ->
      ``{"added": k, "count": fans of I, "skipped": n}``.
    - ``{"tagid": I, ...}``, the older spelling: ``count`` tags the app's first N fans
      (existing ones, with the same skipping), ``openids`` as above.

    A tag the app lacks answers 400 with errcode 45159; bad input 400 with ``error``.
    """
    unknown = sorted(set(body) - {"tag_id", "tagid", "count", "openids"})
    if unknown:
        raise ValueError(f"unknown keys {unknown}: give tag_id and either count or openids")
    if ("tag_id" in body) == ("tagid" in body):
        raise ValueError("give the tag as tag_id (an integer)")
    legacy = "tagid" in body
    key = "tagid" if legacy else "tag_id"
    tag_id = _integer(body[key], key)
    if ("count" in body) == ("openids" in body):
        raise ValueError("give exactly one of count (new fans to add) and openids (fans to tag)")
    if "count" in body:
        count = _integer(body["count"], "count")
        if not 1 <= count <= MAX_MEMBERS_COUNT:
            raise ValueError(f"count must be 1 to {MAX_MEMBERS_COUNT:,}, not {count}")
        return app.tag_first_fans(tag_id, count) if legacy else app.tag_new_fans(tag_id, count)
    openids = body["openids"]
    if not isinstance(openids, list) or not all(isinstance(o, str) for o in openids):
        raise ValueError("openids must be a list of strings")
    return app.tag_listed_fans(tag_id, openids)


def _integer(value: Any, name: str) -> int:
    """``value`` if it is a JSON integer (not a boolean), else ``ValueError`` naming it."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{name} must be an integer, not {value!r}")
    return value


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


_COMPONENT_ENDPOINTS: dict[str, Callable[[Platform, str | None], Document]] = {
    "/_sim/ticket": lambda platform, _: {
        "component_verify_ticket": platform.require_component().issue_ticket()
    },
    "/_sim/authorize": lambda platform, appid: platform.authorize(appid),
    "/_sim/unauthorize": lambda platform, appid: platform.unauthorize(appid),
    "/_sim/component": lambda platform, _: platform.require_component().document(),
}
