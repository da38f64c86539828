"""The WeChat user tag API client: the seed's seven calls, tokens and quotas.

One ``WeChatClient`` owns a pooled urllib3 connection pool with connect and read timeouts and a
``TokenProvider``. Every failure is raised as the exception of its class in the errcode
table (``worker.wechat.errors``); a token error is answered by one refresh and one resend,
never a loop.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlencode, urlsplit

import certifi
import requests
import structlog
import urllib3
from redis import Redis
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.response import HTTPResponse

from producers.intents import check_tag_name as check_name
from worker.base.settings import DEFAULT_API_BASE
from worker.observability.metrics import TOKEN_REJECTIONS, WECHAT_ERRCODES, WECHAT_REQUEST
from worker.observability.redaction import Secret
from worker.wechat.errors import (
    NetworkError,
    ProgrammingError,
    TokenError,
    TokenRefused,
    WeChatError,
    error_for,
)
from worker.wechat.tokens import (
    Fetcher,
    MemoryTokenStore,
    RedisTokenStore,
    TokenProvider,
    TokenStore,
)

#: Most openids one batch (un)tagging call takes (40032 beyond it).
MAX_BATCH = 50
#: WeChat's three system default tags: never renamed or deleted (45058), never
#: reconciled.
RESERVED_TAG_IDS = frozenset({0, 1, 2})
#: Seconds to wait for a connection to WeChat.
CONNECT_TIMEOUT_S = 3.05
#: Seconds to wait for WeChat's answer once the request is sent.
READ_TIMEOUT_S = 10.0

TokenMode = Literal["stable", "classic"]

#: What a successful answer of each call must carry; a 200 without it is garbled (a proxy's
#: page, a truncated body) and is retried, never taken for success.
ANSWER_FIELDS: dict[str, str] = {
    "tags/members/batchtagging": "errcode",
    "tags/members/batchuntagging": "errcode",
    "tags/update": "errcode",
    "tags/delete": "errcode",
    "clear_quota": "errcode",
    "tags/create": "tag",
    "tags/get": "tags",
    "user/tag/get": "count",
    "tags/getidlist": "tagid_list",
    "openapi/quota/get": "quota",
    "token": "access_token",
    "stable_token": "access_token",
    "component/api_component_token": "component_access_token",
    "component/api_authorizer_token": "authorizer_access_token",
}

log = structlog.get_logger("tagsync.wechat")


@dataclass(frozen=True)
class Tag:
    """A tag of the account; ``count`` is its number of fans (from ``tags/get``)."""

    id: int
    name: str
    count: int = 0


@dataclass(frozen=True)
class FansPage:
    """One page of ``user/tag/get``: openids and where the next page starts ("" at the end)."""

    openids: list[str]
    next_openid: str


@dataclass(frozen=True)
class Quota:
    """The daily quota of one API path (``openapi/quota/get``)."""

    daily_limit: int
    used: int
    remain: int


#: The HTTP connection pool a process's clients share.
Pool = urllib3.PoolManager


def pooled_session(pool_size: int = 16, *, api_base: str = DEFAULT_API_BASE) -> Pool:
    """A urllib3 connection pool for ``api_base``, with no retries of its own.

    urllib3 directly, not a ``requests.Session`` on top of it: requests' per-request
    machinery (preparing the request, merging settings, hooks) was a fifth of a WeChat
    call's CPU. The environment's proxy (``HTTPS_PROXY``, ``NO_PROXY``...) and CA bundle
    (``REQUESTS_CA_BUNDLE``, ``CURL_CA_BUNDLE``; else certifi's, as requests does) are
    read once, here.
    """
    scheme = urlsplit(api_base).scheme
    proxy = requests.utils.get_environ_proxies(api_base).get(scheme)
    bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
    options: dict[str, Any] = {
        "num_pools": 4,
        "maxsize": pool_size,
        "ca_certs": bundle or certifi.where(),
        "retries": False,
    }
    manager = urllib3.ProxyManager(proxy, **options) if proxy else urllib3.PoolManager(**options)
    manager.pool_classes_by_scheme = _TIMED_POOLS
    return manager


#: When this thread's last request had left (``last_sent_at``).
_SENT = threading.local()


def last_sent_at() -> float | None:
    """When the last request this thread sent through a pooled session had been written to
    its socket, monotonic seconds; None if it never left. A busy host's thread can wait for
    the GIL between deciding to call and sending: the gate accounts for such a late call
    after the fact (``worker.flush``)."""
    return getattr(_SENT, "at", None)


class _TimedHTTPConnection(HTTPConnection):
    # (urllib3's own getresponse overrides http.client's with its own response type)
    def getresponse(self) -> HTTPResponse:  # type: ignore[override]
        _SENT.at = time.monotonic()  # the request is written: only its answer is waited for
        return super().getresponse()


class _TimedHTTPSConnection(HTTPSConnection):
    def getresponse(self) -> HTTPResponse:  # type: ignore[override]
        _SENT.at = time.monotonic()
        return super().getresponse()


class _TimedHTTPConnectionPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _TimedHTTPConnection


class _TimedHTTPSConnectionPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _TimedHTTPSConnection


_TIMED_POOLS: dict[str, type[urllib3.HTTPConnectionPool]] = {
    "http": _TimedHTTPConnectionPool,
    "https": _TimedHTTPSConnectionPool,
}


def iter_fans(tag_fans: Callable[[int, str], FansPage], tag_id: int) -> Iterator[str]:
    """Every fan of a tag from ``tag_fans(tag_id, next_openid)``, page after page to the
    end (an empty page, no ``next_openid``, or the same one again)."""
    after = ""
    while True:
        page = tag_fans(tag_id, after)
        yield from page.openids
        if not page.openids or not page.next_openid or page.next_openid == after:
            return
        after = page.next_openid


def check_tag_name(name: str) -> None:
    """Refuse a tag name WeChat would refuse: blank, or over 30 UTF-8 bytes."""
    check_name(name, "name")


class WeChatClient:
    """A client of one WeChat Official Account's user tag API."""

    def __init__(
        self,
        *,
        appid: str,
        secret: str | Secret | None,
        api_base: str = DEFAULT_API_BASE,
        token_mode: TokenMode = "stable",
        token_store: TokenStore | None = None,
        redis: Redis | None = None,
        connect_timeout: float = CONNECT_TIMEOUT_S,
        read_timeout: float = READ_TIMEOUT_S,
        pool_size: int = 16,
        fetch: Fetcher | None = None,
        session: Pool | None = None,
    ) -> None:
        """``fetch`` replaces the token fetch by secret (an Open Platform authorizer's tokens
        come from ``api_authorizer_token``); ``session`` shares one connection pool among
        the clients of many accounts on one host."""
        if token_mode not in ("stable", "classic"):
            raise ValueError(f"token_mode must be 'stable' or 'classic', not {token_mode!r}")
        self.appid = appid
        self._secret = secret if isinstance(secret, Secret | None) else Secret(secret)
        self.api_base = api_base.rstrip("/")
        self.token_mode = token_mode
        self._timeout = (connect_timeout, read_timeout)
        self._urllib3_timeout = urllib3.Timeout(connect=connect_timeout, read=read_timeout)
        self._owns_session = session is None
        self._session = session or pooled_session(pool_size, api_base=self.api_base)
        #: The path every call's URL starts with, and the api_base's pool it is sent to
        #: (``_pool``; not used through a proxy, which needs whole URLs).
        self._path = urlsplit(self.api_base).path + "/cgi-bin/"
        self._host_pool: urllib3.HTTPConnectionPool | None = None
        if token_store is None:
            token_store = RedisTokenStore(redis, appid) if redis is not None else MemoryTokenStore()
        self.tokens = TokenProvider(fetch or self.fetch_token, token_store)

    def __repr__(self) -> str:
        return f"WeChatClient(appid={self.appid!r}, api_base={self.api_base!r})"

    @property
    def timeouts(self) -> tuple[float, float]:
        """(connect, read) timeouts in seconds."""
        return self._timeout

    def close(self) -> None:
        """Close the pooled connections (unless the session is shared)."""
        if self._owns_session:
            if self._host_pool is not None:
                self._host_pool.close()  # (urllib3 2's clear() drops pools without closing)
                self._host_pool = None
            self._session.clear()

    def __enter__(self) -> WeChatClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- tags ----------------------------------------------------------------------------

    def create_tag(self, name: str) -> Tag:
        """Create a tag (``tags/create``); at most 100 per account."""
        check_tag_name(name)
        answer = self._call("tags/create", {"tag": {"name": name}})
        try:
            return Tag(int(answer["tag"]["id"]), str(answer["tag"]["name"]))
        except (KeyError, TypeError, ValueError):
            raise NetworkError("tags/create", None, "garbled answer") from None

    def list_tags(self) -> list[Tag]:
        """Every tag of the account with its fan count (``tags/get``)."""
        answer = self._call("tags/get", None, method="GET")
        try:
            return [
                Tag(int(t["id"]), str(t["name"]), int(t.get("count", 0))) for t in answer["tags"]
            ]
        except (KeyError, TypeError, ValueError, AttributeError):
            raise NetworkError("tags/get", None, "garbled tag list") from None

    def rename_tag(self, tag_id: int, name: str) -> None:
        """Rename a tag (``tags/update``); tags 0, 1 and 2 are reserved."""
        check_tag_name(name)
        self._call("tags/update", {"tag": {"id": tag_id, "name": name}})

    def delete_tag(self, tag_id: int) -> None:
        """Delete a tag (``tags/delete``); refused while it has over 100,000 fans (45057)."""
        self._call("tags/delete", {"tag": {"id": tag_id}})

    def tag_fans(self, tag_id: int, next_openid: str = "") -> FansPage:
        """One page of a tag's fans (``user/tag/get``), starting after ``next_openid``."""
        answer = self._call("user/tag/get", {"tagid": tag_id, "next_openid": next_openid})
        openids = list((answer.get("data") or {}).get("openid") or [])
        return FansPage(openids, str(answer.get("next_openid") or ""))

    def iter_tag_fans(self, tag_id: int) -> Iterator[str]:
        """Every fan of a tag, paging with ``next_openid`` to the end."""
        return iter_fans(self.tag_fans, tag_id)

    def batch_tag(self, tag_id: int, openids: Iterable[str]) -> None:
        """Tag up to 50 fans (``tags/members/batchtagging``); all or nothing."""
        self._batch("tags/members/batchtagging", tag_id, openids)

    def batch_untag(self, tag_id: int, openids: Iterable[str]) -> None:
        """Untag up to 50 fans (``tags/members/batchuntagging``); all or nothing."""
        self._batch("tags/members/batchuntagging", tag_id, openids)

    def _batch(self, call: str, tag_id: int, openids: Iterable[str]) -> None:
        openid_list = list(openids)
        if not 1 <= len(openid_list) <= MAX_BATCH:
            raise ValueError(f"a batch takes 1 to {MAX_BATCH} openids, not {len(openid_list)}")
        self._call(call, {"openid_list": openid_list, "tagid": tag_id})

    def tags_of_fan(self, openid: str) -> list[int]:
        """The tag ids a fan carries (``tags/getidlist``)."""
        answer = self._call("tags/getidlist", {"openid": openid})
        return [int(t) for t in answer.get("tagid_list") or []]

    # -- quotas --------------------------------------------------------------------------

    def clear_quota(self) -> None:
        """Reset the account's daily API quotas (``clear_quota``; WeChat allows few a month)."""
        self._call("clear_quota", {"appid": self.appid})

    def get_quota(self, cgi_path: str = "/cgi-bin/tags/members/batchtagging") -> Quota:
        """The daily limit and use of one API path (``openapi/quota/get``)."""
        answer = self._call("openapi/quota/get", {"cgi_path": cgi_path})
        quota = answer["quota"]
        return Quota(int(quota["daily_limit"]), int(quota["used"]), int(quota["remain"]))

    # -- tokens --------------------------------------------------------------------------

    def fetch_token(self, force_refresh: bool = False) -> tuple[str, int]:
        """Fetch a new access token from WeChat: (token, expires_in seconds).

        Prefer ``self.tokens.token()``, which shares one token among all processes.
        """
        if self._secret is None:
            raise TokenRefused("token", 40125, "no app secret configured for this account")
        secret = self._secret.reveal()
        try:
            if self.token_mode == "stable":
                body = {
                    "grant_type": "client_credential",
                    "appid": self.appid,
                    "secret": secret,
                    "force_refresh": force_refresh,
                }
                answer = self.send("stable_token", "POST", body, params={})
            else:
                params = {"grant_type": "client_credential", "appid": self.appid, "secret": secret}
                answer = self.send("token", "GET", None, params=params)
        except WeChatError as exc:
            if exc.errcode is None or exc.errcode == -1:
                raise
            # Here even 40001 means a wrong secret: no retry helps, a human must look.
            raise TokenRefused(exc.call, exc.errcode, exc.errmsg) from None
        try:
            return str(answer["access_token"]), int(answer.get("expires_in", 7200))
        except (TypeError, ValueError) as exc:
            raise NetworkError(
                "token", None, f"garbled token answer: {type(exc).__name__}"
            ) from None

    # -- transport -----------------------------------------------------------------------

    def _call(self, call: str, body: Any, *, method: str = "POST") -> dict[str, Any]:
        token = self.tokens.token()
        try:
            return self.send(call, method, body, params={"access_token": token})
        except TokenError as exc:
            TOKEN_REJECTIONS.inc()
            log.info("wechat.token_rejected", call=call, errcode=exc.errcode)
            self.tokens.invalidate(token)
        # Resend once with a fresh token; a second token error is raised, not looped on.
        token = self.tokens.token()
        return self.send(call, method, body, params={"access_token": token})

    def send(self, call: str, method: str, body: Any, *, params: dict[str, str]) -> dict[str, Any]:
        """One request to ``/cgi-bin/<call>``; the answer, or the failure raised by its class."""
        started = time.perf_counter()
        failure: WeChatError | None = None
        answer: dict[str, Any] = {}
        query = f"?{urlencode(params)}" if params else ""
        _SENT.at = None
        try:
            pool = self._pool()
            response = pool.urlopen(
                method,
                (self._path if pool is not self._session else f"{self.api_base}/cgi-bin/")
                + call
                + query,
                body=None if body is None else json.dumps(body, allow_nan=False),
                headers=_JSON if body is not None else pool.headers,
                timeout=self._urllib3_timeout,
                retries=_NO_RETRIES,
                redirect=False,
                assert_same_host=False,
            )
        except urllib3.exceptions.TimeoutError:
            failure = NetworkError(call, None, "timed out")
        except urllib3.exceptions.HTTPError as exc:
            # urllib3's messages carry the URL with its access_token: never chained or shown.
            failure = NetworkError(call, None, _unreachable(self.api_base, exc))
        else:
            failure, answer = self._parse(call, response.status, response.data)
        duration = time.perf_counter() - started
        errcode = "network" if failure is not None and failure.errcode is None else None
        errcode = errcode or str(failure.errcode if failure is not None else 0)
        outcome = (
            "ok"
            if failure is None
            else ("network" if failure.errcode is None else failure.error_class.value)
        )
        WECHAT_REQUEST.labels(call, outcome).observe(duration)
        WECHAT_ERRCODES.labels(self.appid, call, errcode).inc()
        log.debug("wechat.call", call=call, errcode=errcode, duration=round(duration, 4))
        if failure is not None:
            # Raised outside the except block, so no exception with the URL is chained.
            raise failure
        return answer

    def _pool(self) -> urllib3.HTTPConnectionPool | Pool:
        """The api_base's connection pool, kept: through the manager each request parsed
        its URL and built a pool key, a third of urllib3's CPU per call. Through a proxy,
        the manager."""
        if isinstance(self._session, urllib3.ProxyManager):
            return self._session
        if self._host_pool is None:
            self._host_pool = self._session.connection_from_url(self.api_base)
        return self._host_pool

    def _parse(
        self, call: str, status: int, data: bytes
    ) -> tuple[WeChatError | None, dict[str, Any]]:
        if status >= 500:
            return NetworkError(call, None, f"HTTP {status}"), {}
        try:
            answer = json.loads(data)
        except ValueError:
            return NetworkError(call, None, f"HTTP {status}: answer is not JSON"), {}
        if not isinstance(answer, dict):
            return NetworkError(call, None, "answer is not a JSON object"), {}
        errcode = answer.get("errcode") or 0
        if errcode != 0:
            try:
                code = int(errcode)
            except (TypeError, ValueError):
                return NetworkError(call, None, "errcode is not a number"), {}
            return error_for(call, code, str(answer.get("errmsg", ""))), answer
        if status >= 400:
            return ProgrammingError(call, None, f"HTTP {status}"), {}
        expected = ANSWER_FIELDS.get(call)
        if expected is not None and expected not in answer:
            return NetworkError(call, None, f"answer lacks {expected!r}: not WeChat's"), {}
        return None, answer


#: The header of a request with a JSON body.
_JSON = {"Content-Type": "application/json"}
#: No retries by urllib3 (tagsync's own policy retries), built once, not per request.
_NO_RETRIES = urllib3.Retry(total=False, redirect=False)
#: What a failed connection's message says, and how tagsync says it.
_CAUSES = (
    ("refused", "connection refused"),
    ("Name or service not known", "host not found"),
    ("Temporary failure in name resolution", "host not found"),
    ("timed out", "timed out"),
    ("reset by peer", "connection reset"),
    ("RemoteDisconnected", "connection closed"),
    ("SSL", "TLS failed"),
)


def _unreachable(api_base: str, exc: Exception) -> str:
    """One short line for a request that got no answer (urllib3's own are paragraphs)."""
    text = str(exc)
    cause = next((said for found, said in _CAUSES if found in text), type(exc).__name__)
    return f"no answer from {api_base}: {cause}"
