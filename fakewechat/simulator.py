"""The WeChat tag API's rules, state and faults, independent of HTTP.

``Simulator.call`` takes one request to ``/cgi-bin/<path>`` and returns what WeChat would
answer. All state sits behind one lock: every call is atomic, as WeChat's batch calls are
(one bad openid fails the whole call and applies nothing).
"""

from __future__ import annotations

import random
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from fakewechat.config import MALFORMED_KINDS, ConfigError, SimConfig
from fakewechat.errors import OK, error
from fakewechat.members import Members, TagCounts
from fakewechat.openids import FanDirectory
from fakewechat.stats import BATCH_KINDS, Stats
from fakewechat.tokens import AUTHORIZER, TokenBook

__all__ = ["Answer", "ConfigError", "SimConfig", "Simulator", "Tag", "UnknownTag", "bad_json"]

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
#: Calls that fetch tokens: outside the per-second limit and `max_calls_in_any_second`.
TOKEN_PATHS = frozenset({"token", "stable_token"})


class UnknownTag(LookupError):
    """A test endpoint named a tag the app does not have (45159)."""

    def __init__(self, tag_id: int) -> None:
        super().__init__(f"no tag {tag_id}")
        self.tag_id = tag_id


@dataclass
class Tag:
    """One tag of the account and the fans that carry it (by position, see ``members``)."""

    id: int
    name: str
    fans: Members = field(default_factory=Members)


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
    #: The app that answered (the platform routes ``done`` back to it).
    appid: str | None = None
    #: The fans of a `user/tag/get` page, by position, spelt into ``body`` once the app's
    #: lock is released (ten thousand openids take tens of milliseconds to spell).
    page: list[int] | None = None


@dataclass
class AppState:
    """What the account holds: its tags, who carries which, and today's quota use."""

    tags: dict[int, Tag] = field(default_factory=dict)
    #: How many tags each fan carries, by position (the 45059 rule in O(1)).
    tag_counts: TagCounts = field(default_factory=TagCounts)
    next_tag_id: int = FIRST_TAG_ID
    daily_used: Counter[str] = field(default_factory=Counter)


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
            self.config = SimConfig()
            self.app = AppState()
            self.tokens = TokenBook()
            self.counters = Stats()

    def configure(self, changes: dict[str, Any]) -> dict[str, Any]:
        """Apply `/_sim/config` changes (validated first) and return the whole config."""
        with self._lock:
            self.config = self.config.updated(changes)
            return self.config.document()

    def stats(self) -> dict[str, Any]:
        """The `/_sim/stats` document."""
        with self._lock:
            return self.counters.document(self.tokens.fetches)

    def batch_log(self) -> dict[str, Any]:
        """The `/_sim/log` document: the latest batch calls, oldest first."""
        with self._lock:
            return {"batches": list(self.counters.log)}

    def state(self) -> dict[str, Any]:
        """The `/_sim/state` document: every tag with its name and fans (in openid order).

        The one endpoint that spells every member: seconds for a tag of a million fans.
        """
        with self._lock:
            return {
                "tags": {
                    str(tag.id): {
                        "name": tag.name,
                        "fans": sorted(self.fans.openids_at(tag.fans)),
                    }
                    for tag in self.app.tags.values()
                }
            }

    def expire_tokens(self) -> None:
        """Expire every issued token at once: later calls get 42001."""
        with self._lock:
            self.tokens.expire_all()

    def tag_new_fans(self, tag_id: int, count: int) -> dict[str, int]:
        """`/_sim/members {"count"}`: add ``count`` new fans, all carrying ``tag_id``.

        O(1) in Python whatever ``count`` (the fans are a range, the memberships a slice);
        no call is counted. ``UnknownTag`` (before any fan is added) if there is no such tag.
        """
        with self._lock:
            tag = self._tag_for_members(tag_id)
            start = self.fans.add_range(count)
            tag.fans.add_new(start, count)
            self.app.tag_counts.set_new(start, count)
            return {"added": count, "count": tag.fans.count}

    def tag_listed_fans(self, tag_id: int, openids: list[str]) -> dict[str, int]:
        """`/_sim/members {"openids"}`: tag these fans, adding the unknown ones as fans first.

        A fan that would go over ``max_tags_per_fan`` is skipped (batchtagging would answer
        45059), not refused. ``UnknownTag`` or ``ValueError`` (an openid that cannot be
        this app's) change nothing. No call is counted.
        """
        with self._lock:
            tag = self._tag_for_members(tag_id)
            self.fans.add_openids(o for o in openids if not self.fans.is_fan(o))
            positions = []
            for openid in openids:
                position = self.fans.position_of(openid)
                if position is None:  # added just above: cannot happen
                    raise ValueError(f"not a fan: {openid!r}")
                positions.append(position)
            return self._tag_positions(tag, positions)

    def tag_first_fans(self, tag_id: int, count: int) -> dict[str, int]:
        """The legacy `/_sim/members {"tagid", "count"}`: tag the first ``count`` fans."""
        with self._lock:
            tag = self._tag_for_members(tag_id)
            if count > self.fans.total:
                raise ValueError(f"count {count} is over the app's {self.fans.total} fans")
            return self._tag_positions(tag, range(count))

    def _tag_for_members(self, tag_id: int) -> Tag:
        tag = self.app.tags.get(tag_id)
        if tag is None:
            raise UnknownTag(tag_id)
        return tag

    def _tag_positions(self, tag: Tag, positions: range | list[int]) -> dict[str, int]:
        """Tag fans by position, skipping those with ``max_tags_per_fan`` tags already."""
        limit = int(self.config.max_tags_per_fan)
        counts = self.app.tag_counts
        added = skipped = 0
        for position in positions:
            if position in tag.fans:
                continue
            if counts[position] >= limit:
                skipped += 1
                continue
            tag.fans.add(position)
            counts.increment(position)
            added += 1
        return {"added": added, "count": tag.fans.count, "skipped": skipped}

    # -- for the platform (several apps, a third-party platform) -------------------------

    def knows_token(self, token: str) -> bool:
        """True while this app remembers ``token`` (it issued it, not over an hour ago)."""
        with self._lock:
            return self.tokens.knows(token)

    def issue_authorizer_token(self) -> tuple[str, int]:
        """A token for the app's third-party platform; it counts as a fetch of this app."""
        with self._lock:
            self.tokens.fetches += 1
            token, ttl = self.tokens.issue(float(self.config.token_ttl_s), kind=AUTHORIZER)
            return token, int(ttl)

    def revoke_tokens(self, tokens: list[str]) -> int:
        """Forget ``tokens`` (later calls get 40001); how many this app still knew."""
        with self._lock:
            return self.tokens.revoke(tokens)

    def _latency_s(self) -> float:
        """How long the next answer takes, from ``latency_ms`` (under the lock)."""
        low, high = self.config.latency_ms
        return self._random.uniform(low, high) / 1000 if high else 0.0

    def latency_s(self) -> float:
        """How long an answer of this app takes (the component's answers for it too)."""
        with self._lock:
            return self._latency_s()

    def record_call(self, path: str, body: Any, code: int) -> None:
        """Count a call answered elsewhere (the platform's) in this app's stats."""
        with self._lock:
            self.counters.received(path, body)
            self.counters.answered(path, body, str(code))

    # -- the API ----------------------------------------------------------------------

    def call(self, path: str, method: str, query: dict[str, str], body: Any) -> Answer:
        """Answer one call to ``/cgi-bin/<path>`` as WeChat would."""
        handlers = self._handlers()
        if path not in handlers:
            return Answer(404, {"errcode": 404, "errmsg": f"unknown api {path}"})
        with self._lock:
            self.counters.received(path, body)
            if path in TOKEN_PATHS:
                answer = Answer(200, self._token_call(path, query, body))
            else:
                answer = self._api_call(path, query, body, handlers[path])
            code = answer.body.get("errcode", 0) if answer.status == 200 else answer.status
            self.counters.answered(path, body, answer.stat_code or str(code))
            # Two batches of one tag answered at the same time mean two flushes overlapped.
            tag_id = _tag_id(body.get("tagid")) if isinstance(body, dict) else None
            if path in BATCH_KINDS and tag_id is not None:
                self.counters.batch_started(tag_id)
                answer.batch_tag = tag_id
        if answer.page is not None:
            # Positions never move (fans are only appended): spelling needs no lock.
            openids = self.fans.openids_at(answer.page)
            answer.body = {"count": len(openids), "data": {"openid": openids}}
            answer.body["next_openid"] = openids[-1]
        return answer

    def done(self, answer: Answer) -> None:
        """Mark the call of ``answer`` as answered (its latency has passed)."""
        if answer.batch_tag is not None:
            with self._lock:
                self.counters.batch_done(answer.batch_tag)

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

    def _api_call(self, path: str, query: dict[str, str], body: Any, handler: Any) -> Answer:
        in_second = self.counters.api_call(path)
        token_error = self.tokens.check(query.get("access_token"))
        if token_error:
            return Answer(200, error(token_error))
        cfg = self.config
        if cfg.rate_per_sec is not None and in_second > cfg.rate_per_sec:
            return Answer(200, error(45011))
        metered = path not in ("clear_quota", "openapi/quota/get")
        used = self.app.daily_used
        if metered and cfg.daily_quota is not None and used[path] >= cfg.daily_quota:
            return Answer(200, error(45009))
        used[path] += 1
        forced = cfg.forced_errcodes.get(path)
        if forced is not None:
            return Answer(200, error(int(forced)))
        delay = self._latency_s()
        if cfg.http500_rate and self._random.random() < cfg.http500_rate:
            return Answer(500, {"errmsg": "internal server error"}, delay_s=delay)
        if cfg.busy_rate and self._random.random() < cfg.busy_rate:
            return Answer(200, error(-1), delay_s=delay)
        if body is _BAD_JSON:
            return Answer(200, error(47001))
        malformed = ""
        if cfg.malformed_rate and self._random.random() < cfg.malformed_rate:
            malformed = cfg.malformed_kind
            if malformed == "mixed":
                malformed = self._random.choice(MALFORMED_KINDS)
            if malformed != "reset":
                return _garbled(malformed, delay)
        if (
            cfg.spurious_45159_rate
            and path in BATCH_KINDS
            and self._random.random() < cfg.spurious_45159_rate
        ):
            return Answer(200, error(45159), delay_s=delay)
        result = handler(body if isinstance(body, dict) else {})
        answer = Answer(200, result, delay_s=delay, page=result.pop(_PAGE, None))
        if malformed == "reset":
            answer.reset = True
            answer.stat_code = "reset"
        if cfg.timeout_rate and self._random.random() < cfg.timeout_rate:
            # The call is carried out; only its answer is lost, as with a real timeout.
            answer.hang_s = float(cfg.timeout_hang_s)
        return answer

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
        self.tokens.fetches += 1
        forced = self.config.forced_errcodes.get(path)
        if forced is not None:
            return error(int(forced))
        if path == "stable_token" and not params.get("force_refresh"):
            # The stable token is handed out again while it is valid.
            current = self.tokens.stable
            if current is not None and self.tokens.check(current) == 0:
                return {"access_token": current, "expires_in": int(self.tokens.left_s(current))}
        token, ttl = self.tokens.issue(float(self.config.token_ttl_s))
        if path == "stable_token":
            self.tokens.stable = token
        return {"access_token": token, "expires_in": int(ttl)}

    # -- tags -------------------------------------------------------------------------

    def _name_error(self, name: Any, own_id: int | None = None) -> int:
        if not isinstance(name, str) or not name.strip():
            return 45157
        if len(name.encode()) > MAX_TAG_NAME_BYTES:
            return 45158
        if any(tag.name == name and tag.id != own_id for tag in self.app.tags.values()):
            return 45157
        return 0

    def _create_tag(self, body: dict[str, Any]) -> dict[str, Any]:
        name = (body.get("tag") or {}).get("name")
        code = self._name_error(name)
        if code or not isinstance(name, str):
            return error(code or 45157)
        if len(self.app.tags) >= MAX_TAGS:
            return error(45056)
        tag = Tag(self.app.next_tag_id, name)
        self.app.next_tag_id += 1
        self.app.tags[tag.id] = tag
        return {"tag": {"id": tag.id, "name": tag.name}}

    def _list_tags(self, body: dict[str, Any]) -> dict[str, Any]:
        return {
            "tags": [
                {"id": t.id, "name": t.name, "count": t.fans.count} for t in self.app.tags.values()
            ]
        }

    def _rename_tag(self, body: dict[str, Any]) -> dict[str, Any]:
        spec = body.get("tag") or {}
        tag_id = _tag_id(spec.get("id"))
        if tag_id in RESERVED_TAG_IDS:
            return error(45058)
        if tag_id not in self.app.tags:
            return error(45159)
        code = self._name_error(spec.get("name"), own_id=tag_id)
        if code:
            return error(code)
        self.app.tags[tag_id].name = spec["name"]
        return dict(OK)

    def _delete_tag(self, body: dict[str, Any]) -> dict[str, Any]:
        tag_id = _tag_id((body.get("tag") or {}).get("id"))
        if tag_id in RESERVED_TAG_IDS:
            return error(45058)
        if tag_id is None or tag_id not in self.app.tags:
            return error(45159)
        tag = self.app.tags[tag_id]
        if tag.fans.count > MAX_FANS_TO_DELETE:
            return error(45057)
        # At most 100,000 members: the walk is bounded.
        self.app.tag_counts.decrement(tag.fans)
        del self.app.tags[tag_id]
        return dict(OK)

    def _tag_fans(self, body: dict[str, Any]) -> dict[str, Any]:
        tag = self.app.tags.get(_tag_id(body.get("tagid")) or -1)
        if tag is None:
            return error(45159)
        after = body.get("next_openid") or ""
        if not isinstance(after, str):
            return error(40003)
        # The page starts right after the cursor's fan, in listing order, whether or not
        # that fan still carries the tag: O(page), and stable while fans are untagged.
        position = self.fans.position_of(after) if after else -1
        if position is None:
            return error(40003)
        page = tag.fans.after(position, int(self.config.page_size))
        if not page:
            return {"count": 0, "next_openid": ""}
        # Spelt by ``call`` after the lock is released.
        return {"count": len(page), _PAGE: page}

    def _openid_error(self, openid: Any) -> int:
        if not isinstance(openid, str):
            return 40003
        if self.fans.is_fan(openid):
            return 0
        return 49003 if self.fans.is_foreign(openid) else 40003

    def _batch_check(self, body: dict[str, Any]) -> tuple[Tag | None, list[int], dict[str, Any]]:
        """The tag and the fans' positions of a batch call, or its error (nothing applied)."""
        openids = body.get("openid_list")
        if not isinstance(openids, list) or not openids or len(openids) > MAX_BATCH:
            return None, [], error(40032)
        tag = self.app.tags.get(_tag_id(body.get("tagid")) or -1)
        if tag is None:
            return None, [], error(45159)
        positions = []
        for openid in openids:
            position = self.fans.position_of(openid) if isinstance(openid, str) else None
            if position is None:
                return None, [], error(self._openid_error(openid) or 40003, str(openid)[:64])
            positions.append(position)
        return tag, positions, {}

    def _batch_tagging(self, body: dict[str, Any]) -> dict[str, Any]:
        tag, positions, failure = self._batch_check(body)
        if tag is None:
            return failure
        limit = int(self.config.max_tags_per_fan)
        counts = self.app.tag_counts
        for openid, position in zip(body["openid_list"], positions, strict=True):
            if position not in tag.fans and counts[position] >= limit:
                return error(45059, openid)
        for position in positions:
            if tag.fans.add(position):
                counts.increment(position)
        return dict(OK)

    def _batch_untagging(self, body: dict[str, Any]) -> dict[str, Any]:
        tag, positions, failure = self._batch_check(body)
        if tag is None:
            return failure
        self.app.tag_counts.decrement([p for p in positions if tag.fans.discard(p)])
        return dict(OK)

    def _tags_of_fan(self, body: dict[str, Any]) -> dict[str, Any]:
        openid = body.get("openid")
        position = self.fans.position_of(openid) if isinstance(openid, str) else None
        if position is None:
            return error(self._openid_error(openid) or 40003)
        # At most 100 tags: O(tags).
        return {"tagid_list": sorted(t.id for t in self.app.tags.values() if position in t.fans)}

    # -- quotas -----------------------------------------------------------------------

    def _clear_quota(self, body: dict[str, Any]) -> dict[str, Any]:
        if body.get("appid") != self.appid:
            return error(40013)
        self.app.daily_used.clear()
        return dict(OK)

    def _quota_get(self, body: dict[str, Any]) -> dict[str, Any]:
        cgi_path = body.get("cgi_path")
        if not isinstance(cgi_path, str) or not cgi_path.startswith("/cgi-bin/"):
            return error(47001)
        path = cgi_path.removeprefix("/cgi-bin/")
        limit = self.config.daily_quota
        limit = limit if limit is not None else UNLIMITED_DAILY_QUOTA
        used = self.app.daily_used[path]
        return {**OK, "quota": {"daily_limit": limit, "used": used, "remain": max(0, limit - used)}}


def _tag_id(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


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

#: The key under which `user/tag/get` hands its page's positions to ``call`` to spell.
_PAGE = "_page_positions"

#: Marks a request body that was not valid JSON (WeChat answers 47001).
_BAD_JSON = object()


def bad_json() -> object:
    """The body value the HTTP layer passes for a body that does not parse."""
    return _BAD_JSON
