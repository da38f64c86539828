"""The WeChat tag API's rules, state and faults, independent of HTTP.

``Simulator.call`` takes one request to ``/cgi-bin/<path>`` and returns what WeChat would
answer. All state sits behind one lock: every call is atomic, as WeChat's batch calls are
(one bad openid fails the whole call and applies nothing).
"""

from __future__ import annotations

import bisect
import random
import secrets
import string
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

from fakewechat.openids import FanDirectory

#: Tags 0, 1 and 2 are the system's own: they cannot be renamed or deleted (45058).
RESERVED_TAG_IDS = frozenset({0, 1, 2})
#: The first id handed to a created tag.
FIRST_TAG_ID = 100
#: How many tags an account may create (45056 beyond it).
MAX_TAGS = 100
#: A tag name's limit in UTF-8 bytes (45158 beyond it).
MAX_TAG_NAME_BYTES = 30
#: Most openids in one batch (de)tagging call (40032 beyond it).
MAX_BATCH = 50
#: A tag with more fans than this cannot be deleted (45057).
MAX_FANS_TO_DELETE = 100_000
#: How long a token stays valid after a newer one was fetched, in seconds.
OLD_TOKEN_GRACE_S = 300.0
#: How many batch calls `/_sim/log` keeps.
BATCH_LOG_SIZE = 20_000
#: Calls that fetch tokens: outside the per-second limit and `max_calls_in_any_second`.
TOKEN_PATHS = frozenset({"token", "stable_token"})

ERRMSG = {
    0: "ok",
    -1: "system error",
    40001: "invalid credential, access_token is invalid or not latest",
    40002: "invalid grant_type",
    40003: "invalid openid",
    40013: "invalid appid",
    40014: "invalid access_token",
    40032: "invalid openid list size, at most 50",
    40125: "invalid appsecret",
    41001: "access_token missing",
    42001: "access_token expired",
    43002: "require POST method",
    44002: "empty post data",
    45009: "reach max api daily quota limit",
    45011: "api minute-quota reach limit, mustslower retry next minute",
    45056: "too many tags",
    45057: "can't delete the tag that has too many fans",
    45058: "can't modify sys tag",
    45059: "has too many tags",
    45157: "invalid tag name",
    45158: "tag name too long",
    45159: "invalid tag id",
    47001: "data format error",
    49003: "not match openid with appid",
}


def default_config() -> dict[str, Any]:
    """The fault and limit settings of a fresh simulator (`POST /_sim/config` changes them)."""
    return {
        "busy_rate": 0.0,
        "http500_rate": 0.0,
        "timeout_rate": 0.0,
        # How long a "timeout" answer hangs; longer than any sane client read timeout.
        "timeout_hang_s": 30.0,
        "latency_ms": [0, 0],
        "rate_per_sec": None,
        "daily_quota": None,
        "max_tags_per_fan": 20,
        "token_ttl_s": 7200,
        "page_size": 10_000,
        # {path: errcode}: every call of that path answers the errcode (e.g. 48001, 40164).
        "forced_errcodes": {},
        # Batch calls on tags that exist answer 45159 at this rate (as WeChat does right
        # after a tag's creation and under concurrent calls on one fan); nothing is applied.
        "spurious_45159_rate": 0.0,
        # Answers that are not WeChat's JSON, at this rate: see MALFORMED_KINDS.
        "malformed_rate": 0.0,
        "malformed_kind": "mixed",
    }


#: Garbled answers the simulator can give: a 200 whose body is not JSON, a proxy's HTML
#: 502 page, JSON without errcode, and a connection reset after the call was carried out.
MALFORMED_KINDS = ("not_json", "html_502", "no_errcode", "reset")


class ConfigError(ValueError):
    """A `/_sim/config` body with an unknown key or a value of the wrong shape."""


def _check_config(changes: dict[str, Any]) -> None:
    known = default_config()
    for key, value in changes.items():
        if key not in known:
            raise ConfigError(f"unknown config key {key!r}")
        if key.endswith("_rate") and key != "rate_per_sec":
            if not isinstance(value, int | float) or not 0 <= value <= 1:
                raise ConfigError(f"{key} must be a number from 0 to 1")
        elif key == "latency_ms":
            if (
                not isinstance(value, list)
                or len(value) != 2
                or not all(isinstance(v, int | float) and v >= 0 for v in value)
                or value[0] > value[1]
            ):
                raise ConfigError("latency_ms must be [low, high] milliseconds")
        elif key == "malformed_kind":
            if value not in (*MALFORMED_KINDS, "mixed"):
                raise ConfigError(
                    f"malformed_kind must be one of {', '.join(MALFORMED_KINDS)}, mixed"
                )
        elif key == "forced_errcodes":
            if not isinstance(value, dict) or not all(isinstance(v, int) for v in value.values()):
                raise ConfigError("forced_errcodes must map API paths to errcodes")
        elif key in ("rate_per_sec", "daily_quota"):
            if value is not None and (not isinstance(value, int) or value < 0):
                raise ConfigError(f"{key} must be a whole number or null")
        elif not isinstance(value, int | float) or value <= 0:
            raise ConfigError(f"{key} must be a positive number")


@dataclass
class Tag:
    """One tag of the account and the fans that carry it."""

    id: int
    name: str
    fans: set[str] = field(default_factory=set)
    _sorted: list[str] | None = None

    def sorted_fans(self) -> list[str]:
        """Fans in openid order, the order `user/tag/get` pages through (cached)."""
        if self._sorted is None:
            self._sorted = sorted(self.fans)
        return self._sorted

    def changed(self) -> None:
        """Forget the cached order after a change of membership."""
        self._sorted = None


@dataclass
class Answer:
    """What the simulator answers one call: an HTTP status, a JSON body, an optional hang."""

    status: int
    body: dict[str, Any]
    hang_s: float = 0.0
    delay_s: float = 0.0
    #: The tag of a batch call while it is being answered (for overlap detection).
    batch_tag: int | None = None
    #: A body sent as is instead of ``body`` (a garbled answer), with its content type.
    raw: str | None = None
    content_type: str = "application/json; charset=utf-8"
    #: Close the connection instead of answering (the call was carried out).
    reset: bool = False
    #: How the answer counts in ``errcodes`` when it is not WeChat's JSON.
    stat_code: str | None = None


def error(code: int, detail: str = "") -> dict[str, Any]:
    """A WeChat error body."""
    message = ERRMSG.get(code, "error")
    return {"errcode": code, "errmsg": f"{message}{' hint: ' + detail if detail else ''}"}


OK = {"errcode": 0, "errmsg": "ok"}


class Simulator:
    """One WeChat Official Account's tag API, with its fans, tags, tokens, quotas and faults."""

    def __init__(self, *, appid: str, secret: str, fans: int = 0, seed: int = 0) -> None:
        self.appid = appid
        self._secret = secret
        self.fans = FanDirectory(appid, seed=seed, count=fans)
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self.reset()

    def __repr__(self) -> str:
        return f"Simulator(appid={self.appid!r}, fans={self.fans.total})"

    # -- test endpoints ---------------------------------------------------------------

    def reset(self) -> None:
        """Clear tags, memberships, tokens, stats, quotas and faults; fans stay."""
        with self._lock:
            self.config = default_config()
            self.tags: dict[int, Tag] = {}
            self.tags_of_fan: dict[str, set[int]] = {}
            self._next_tag_id = FIRST_TAG_ID
            self._tokens: dict[str, float] = {}  # token -> expiry (monotonic seconds)
            self._stable_token: str | None = None
            self._calls: Counter[str] = Counter()
            self._errcodes: Counter[str] = Counter()
            self._batch_sizes: dict[str, Counter[str]] = {
                "tagging": Counter(),
                "untagging": Counter(),
            }
            self._token_fetches = 0
            self._second = 0
            self._calls_this_second = 0
            self._max_calls_in_any_second = 0
            self._daily_used: Counter[str] = Counter()
            self._in_flight_tags: Counter[int] = Counter()
            self._overlapping_batches = 0
            self._first_call_at: float | None = None
            self._last_call_at: float | None = None
            self._batch_log: deque[dict[str, Any]] = deque(maxlen=BATCH_LOG_SIZE)

    def configure(self, changes: dict[str, Any]) -> dict[str, Any]:
        """Apply `/_sim/config` changes (validated first) and return the whole config."""
        _check_config(changes)
        with self._lock:
            self.config.update(changes)
            return dict(self.config)

    def stats(self) -> dict[str, Any]:
        """The `/_sim/stats` document."""
        with self._lock:
            return {
                "calls": dict(self._calls),
                "errcodes": dict(self._errcodes),
                "batch_sizes": {kind: dict(c) for kind, c in self._batch_sizes.items()},
                "token_fetches": self._token_fetches,
                "max_calls_in_any_second": self._max_calls_in_any_second,
                "overlapping_batches": self._overlapping_batches,
                "first_batch_at": self._first_call_at,
                "last_batch_at": self._last_call_at,
            }

    def batch_log(self) -> dict[str, Any]:
        """The `/_sim/log` document: the latest batch calls, oldest first."""
        with self._lock:
            return {"batches": list(self._batch_log)}

    def state(self) -> dict[str, Any]:
        """The `/_sim/state` document: every tag with its name and fans."""
        with self._lock:
            return {
                "tags": {
                    str(tag.id): {"name": tag.name, "fans": tag.sorted_fans()}
                    for tag in self.tags.values()
                }
            }

    def expire_tokens(self) -> None:
        """Expire every issued token at once: later calls get 42001."""
        with self._lock:
            now = time.monotonic()
            for token in self._tokens:
                self._tokens[token] = now

    def seed_members(self, tag_id: int, openids: list[str]) -> int:
        """Tag fans directly, bypassing limits and stats (bulk set-up for big tags)."""
        with self._lock:
            tag = self.tags.get(tag_id)
            if tag is None:
                raise KeyError(tag_id)
            for openid in openids:
                tag.fans.add(openid)
                self.tags_of_fan.setdefault(openid, set()).add(tag_id)
            tag.changed()
            return len(tag.fans)

    # -- the API ----------------------------------------------------------------------

    def call(self, path: str, method: str, query: dict[str, str], body: Any) -> Answer:
        """Answer one call to ``/cgi-bin/<path>`` as WeChat would."""
        handlers = self._handlers()
        if path not in handlers:
            return Answer(404, {"errcode": 404, "errmsg": f"unknown api {path}"})
        with self._lock:
            self._calls[path] += 1
            self._count_batch(path, body)
            if path in TOKEN_PATHS:
                answer = Answer(200, self._token_call(path, query, body))
            else:
                answer = self._api_call(path, query, body, handlers[path])
            code = answer.body.get("errcode", 0) if answer.status == 200 else answer.status
            self._errcodes[answer.stat_code or str(code)] += 1
            if path.startswith("tags/members/") and isinstance(body, dict):
                self._batch_log.append(
                    {
                        "at": time.time(),
                        "op": "untag" if path.endswith("untagging") else "tag",
                        "tagid": body.get("tagid"),
                        "openids": list(body.get("openid_list") or [])[: MAX_BATCH + 1],
                        "errcode": answer.stat_code or str(code),
                    }
                )
            self._enter_batch(path, body, answer)
        return answer

    def _enter_batch(self, path: str, body: Any, answer: Answer) -> None:
        # Two batches of one tag answered at the same time mean two flushes overlapped.
        if path.startswith("tags/members/") and isinstance(body, dict):
            tag_id = self._tag_id(body.get("tagid"))
            if tag_id is not None:
                if self._in_flight_tags[tag_id]:
                    self._overlapping_batches += 1
                self._in_flight_tags[tag_id] += 1
                answer.batch_tag = tag_id

    def done(self, answer: Answer) -> None:
        """Mark the call of ``answer`` as answered (its latency has passed)."""
        if answer.batch_tag is not None:
            with self._lock:
                # A reset while the call was answered already dropped its count.
                if self._in_flight_tags[answer.batch_tag] > 0:
                    self._in_flight_tags[answer.batch_tag] -= 1

    def _handlers(self) -> dict[str, Any]:
        return {
            "token": None,
            "stable_token": None,
            "tags/create": self._create_tag,
            "tags/get": self._list_tags,
            "tags/update": self._rename_tag,
            "tags/delete": self._delete_tag,
            "user/tag/get": self._tag_fans,
            "tags/members/batchtagging": self._batch_tagging,
            "tags/members/batchuntagging": self._batch_untagging,
            "tags/getidlist": self._tags_of_fan,
            "clear_quota": self._clear_quota,
            "openapi/quota/get": self._quota_get,
        }

    def _count_batch(self, path: str, body: Any) -> None:
        kind = {"tags/members/batchtagging": "tagging", "tags/members/batchuntagging": "untagging"}
        if path in kind and isinstance(body, dict) and isinstance(body.get("openid_list"), list):
            self._batch_sizes[kind[path]][str(len(body["openid_list"]))] += 1

    def _api_call(self, path: str, query: dict[str, str], body: Any, handler: Any) -> Answer:
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second, self._calls_this_second = second, 0
        self._calls_this_second += 1
        self._max_calls_in_any_second = max(self._max_calls_in_any_second, self._calls_this_second)
        if path.startswith("tags/members/"):
            if self._first_call_at is None:
                self._first_call_at = now
            self._last_call_at = now

        token_error = self._check_token(query.get("access_token"))
        if token_error:
            return Answer(200, error(token_error))
        cfg = self.config
        if cfg["rate_per_sec"] is not None and self._calls_this_second > cfg["rate_per_sec"]:
            return Answer(200, error(45011))
        metered = path not in ("clear_quota", "openapi/quota/get")
        if (
            metered
            and cfg["daily_quota"] is not None
            and self._daily_used[path] >= cfg["daily_quota"]
        ):
            return Answer(200, error(45009))
        self._daily_used[path] += 1
        forced = cfg["forced_errcodes"].get(path)
        if forced is not None:
            return Answer(200, error(int(forced)))
        low, high = cfg["latency_ms"]
        delay = self._random.uniform(low, high) / 1000 if high else 0.0
        if cfg["http500_rate"] and self._random.random() < cfg["http500_rate"]:
            return Answer(500, {"errmsg": "internal server error"}, delay_s=delay)
        if cfg["busy_rate"] and self._random.random() < cfg["busy_rate"]:
            return Answer(200, error(-1), delay_s=delay)
        if body is _BAD_JSON:
            return Answer(200, error(47001))
        malformed = ""
        if cfg["malformed_rate"] and self._random.random() < cfg["malformed_rate"]:
            malformed = cfg["malformed_kind"]
            if malformed == "mixed":
                malformed = self._random.choice(MALFORMED_KINDS)
            if malformed != "reset":
                return _garbled(malformed, delay)
        if (
            cfg["spurious_45159_rate"]
            and path.startswith("tags/members/")
            and self._random.random() < cfg["spurious_45159_rate"]
        ):
            return Answer(200, error(45159), delay_s=delay)
        result = handler(body if isinstance(body, dict) else {})
        answer = Answer(200, result, delay_s=delay)
        if malformed == "reset":
            answer.reset = True
            answer.stat_code = "reset"
        if cfg["timeout_rate"] and self._random.random() < cfg["timeout_rate"]:
            # The call is carried out; only its answer is lost, as with a real timeout.
            answer.hang_s = float(cfg["timeout_hang_s"])
        return answer

    # -- tokens -----------------------------------------------------------------------

    def _check_token(self, token: str | None) -> int:
        if not token:
            return 41001
        expiry = self._tokens.get(token)
        if expiry is None:
            return 40001 if len(token) == 64 and token.isalnum() else 40014
        return 42001 if time.monotonic() >= expiry else 0

    def _issue_token(self) -> tuple[str, float]:
        now = time.monotonic()
        for token, expiry in self._tokens.items():
            self._tokens[token] = min(expiry, now + OLD_TOKEN_GRACE_S)
        # Forget long-dead tokens so a long run does not grow without bound.
        self._tokens = {t: e for t, e in self._tokens.items() if e > now - 3600}
        alphabet = string.ascii_letters + string.digits
        token = "".join(secrets.choice(alphabet) for _ in range(64))
        ttl = float(self.config["token_ttl_s"])
        self._tokens[token] = now + ttl
        return token, ttl

    def _token_call(self, path: str, query: dict[str, str], body: Any) -> dict[str, Any]:
        params = query if path == "token" else (body if isinstance(body, dict) else {})
        if params.get("grant_type") != "client_credential":
            return error(40002)
        if params.get("appid") != self.appid:
            return error(40013)
        if params.get("secret") != self._secret:
            # WeChat's `token` calls a wrong secret an invalid credential; `stable_token`
            # names it.
            return error(40001 if path == "token" else 40125)
        self._token_fetches += 1
        forced = self.config["forced_errcodes"].get(path)
        if forced is not None:
            return error(int(forced))
        if path == "stable_token" and not params.get("force_refresh"):
            # The stable token is handed out again while it is valid.
            current = self._stable_token
            if current is not None and self._check_token(current) == 0:
                remaining = self._tokens[current] - time.monotonic()
                return {"access_token": current, "expires_in": int(remaining)}
        token, ttl = self._issue_token()
        if path == "stable_token":
            self._stable_token = token
        return {"access_token": token, "expires_in": int(ttl)}

    # -- tags -------------------------------------------------------------------------

    def _name_error(self, name: Any, own_id: int | None = None) -> int:
        if not isinstance(name, str) or not name.strip():
            return 45157
        if len(name.encode()) > MAX_TAG_NAME_BYTES:
            return 45158
        if any(tag.name == name and tag.id != own_id for tag in self.tags.values()):
            return 45157
        return 0

    def _create_tag(self, body: dict[str, Any]) -> dict[str, Any]:
        name = (body.get("tag") or {}).get("name")
        code = self._name_error(name)
        if code or not isinstance(name, str):
            return error(code or 45157)
        if len(self.tags) >= MAX_TAGS:
            return error(45056)
        tag = Tag(self._next_tag_id, name)
        self._next_tag_id += 1
        self.tags[tag.id] = tag
        return {"tag": {"id": tag.id, "name": tag.name}}

    def _list_tags(self, body: dict[str, Any]) -> dict[str, Any]:
        return {
            "tags": [{"id": t.id, "name": t.name, "count": len(t.fans)} for t in self.tags.values()]
        }

    def _tag_id(self, value: Any) -> int | None:
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    def _rename_tag(self, body: dict[str, Any]) -> dict[str, Any]:
        spec = body.get("tag") or {}
        tag_id = self._tag_id(spec.get("id"))
        if tag_id in RESERVED_TAG_IDS:
            return error(45058)
        if tag_id not in self.tags:
            return error(45159)
        code = self._name_error(spec.get("name"), own_id=tag_id)
        if code:
            return error(code)
        self.tags[tag_id].name = spec["name"]
        return dict(OK)

    def _delete_tag(self, body: dict[str, Any]) -> dict[str, Any]:
        tag_id = self._tag_id((body.get("tag") or {}).get("id"))
        if tag_id in RESERVED_TAG_IDS:
            return error(45058)
        if tag_id is None or tag_id not in self.tags:
            return error(45159)
        tag = self.tags[tag_id]
        if len(tag.fans) > MAX_FANS_TO_DELETE:
            return error(45057)
        for openid in tag.fans:
            self.tags_of_fan[openid].discard(tag_id)
        del self.tags[tag_id]
        return dict(OK)

    def _tag_fans(self, body: dict[str, Any]) -> dict[str, Any]:
        tag = self.tags.get(self._tag_id(body.get("tagid")) or -1)
        if tag is None:
            return error(45159)
        after = body.get("next_openid") or ""
        if not isinstance(after, str) or (after and self._openid_error(after)):
            return error(40003)
        fans = tag.sorted_fans()
        start = bisect.bisect_right(fans, after) if after else 0
        page = fans[start : start + int(self.config["page_size"])]
        if not page:
            return {"count": 0, "next_openid": ""}
        return {"count": len(page), "data": {"openid": page}, "next_openid": page[-1]}

    def _openid_error(self, openid: Any) -> int:
        if not isinstance(openid, str):
            return 40003
        if self.fans.is_fan(openid):
            return 0
        return 49003 if self.fans.is_foreign(openid) else 40003

    def _batch_check(self, body: dict[str, Any]) -> tuple[Tag | None, list[str], dict[str, Any]]:
        openids = body.get("openid_list")
        if not isinstance(openids, list) or not openids or len(openids) > MAX_BATCH:
            return None, [], error(40032)
        tag = self.tags.get(self._tag_id(body.get("tagid")) or -1)
        if tag is None:
            return None, [], error(45159)
        for openid in openids:
            code = self._openid_error(openid)
            if code:
                return None, [], error(code, str(openid)[:64])
        return tag, openids, {}

    def _batch_tagging(self, body: dict[str, Any]) -> dict[str, Any]:
        tag, openids, failure = self._batch_check(body)
        if tag is None:
            return failure
        limit = int(self.config["max_tags_per_fan"])
        for openid in openids:
            carried = self.tags_of_fan.get(openid, set())
            if tag.id not in carried and len(carried) >= limit:
                return error(45059, openid)
        for openid in openids:
            self.tags_of_fan.setdefault(openid, set()).add(tag.id)
            tag.fans.add(openid)
        tag.changed()
        return dict(OK)

    def _batch_untagging(self, body: dict[str, Any]) -> dict[str, Any]:
        tag, openids, failure = self._batch_check(body)
        if tag is None:
            return failure
        for openid in openids:
            self.tags_of_fan.get(openid, set()).discard(tag.id)
            tag.fans.discard(openid)
        tag.changed()
        return dict(OK)

    def _tags_of_fan(self, body: dict[str, Any]) -> dict[str, Any]:
        openid = body.get("openid")
        code = self._openid_error(openid)
        if code or not isinstance(openid, str):
            return error(code or 40003)
        return {"tagid_list": sorted(self.tags_of_fan.get(openid, set()))}

    # -- quotas -----------------------------------------------------------------------

    def _clear_quota(self, body: dict[str, Any]) -> dict[str, Any]:
        if body.get("appid") != self.appid:
            return error(40013)
        self._daily_used.clear()
        return dict(OK)

    def _quota_get(self, body: dict[str, Any]) -> dict[str, Any]:
        cgi_path = body.get("cgi_path")
        if not isinstance(cgi_path, str) or not cgi_path.startswith("/cgi-bin/"):
            return error(47001)
        path = cgi_path.removeprefix("/cgi-bin/")
        limit = self.config["daily_quota"]
        limit = limit if limit is not None else UNLIMITED_DAILY_QUOTA
        used = self._daily_used[path]
        return {**OK, "quota": {"daily_limit": limit, "used": used, "remain": max(0, limit - used)}}


def _garbled(kind: str, delay: float) -> Answer:
    """An answer that is not WeChat's JSON (nothing was carried out)."""
    if kind == "html_502":
        page = "<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>"
        return Answer(502, {}, delay_s=delay, raw=page, content_type="text/html", stat_code="502")
    if kind == "no_errcode":
        return Answer(200, {"result": "ok?"}, delay_s=delay, stat_code="no_errcode")
    return Answer(
        200,
        {},
        delay_s=delay,
        raw="system error <br/>",
        content_type="text/plain",
        stat_code="not_json",
    )


#: What `openapi/quota/get` reports as the daily limit when `daily_quota` is not set.
UNLIMITED_DAILY_QUOTA = 10_000_000

#: Marks a request body that was not valid JSON (WeChat answers 47001).
_BAD_JSON = object()


def bad_json() -> object:
    """The body value the HTTP layer passes for a body that does not parse."""
    return _BAD_JSON
