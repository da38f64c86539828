"""Access tokens shared by every process, refreshed by one of them at a time (single flight).

WeChat allows few token fetches a day, and every fetch makes the previous token expire in
about five minutes, so processes must not each fetch their own. The token lives in Redis
with a TTL on Redis's clock; when it nears its end one process takes a short lock and
fetches, while the others keep using the still-valid token. A token WeChat rejects is
dropped only if it is still the stored one (compare-and-delete): a late report of an old
failure never throws away a token another process just fetched.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from typing import Protocol

from redis import Redis

from worker.base.lua import load_script
from worker.observability.metrics import TOKEN_REFRESH_FAILURES, TOKEN_REFRESHES
from worker.observability.redaction import REDACTOR
from worker.wechat.errors import TokenUnavailable, WeChatError

#: A token is refreshed once less than this share of its lifetime is left...
REFRESH_SHARE = 0.25
#: ...but never earlier than this many seconds before it expires (WeChat: 7200 s tokens).
MAX_REFRESH_MARGIN_S = 300.0
#: Stored tokens expire this much before WeChat says, to cover clock skew and transit.
EXPIRY_SAFETY_S = 60.0
#: How long the single-flight lock is held at most (longer than one token fetch).
LOCK_TIMEOUT_S = 15.0
#: How long a failed token is remembered, so the next fetch can force a new one.
FAILED_MEMORY_S = 600.0
#: How often a process waiting for another's fetch looks again.
POLL_INTERVAL_S = 0.05
#: How long a process keeps using the token it last read before asking the store again.
#: Every WeChat call read it from Redis (one round trip a call); a token refreshed by
#: another process meanwhile is seen this much later, and the old one stays valid at
#: WeChat for about 5 minutes after a refresh. A token WeChat rejects is dropped at once.
LOCAL_TTL_S = 5.0

#: Fetches a token: ``fetch(force_refresh)`` -> (access_token, expires_in seconds).
Fetcher = Callable[[bool], tuple[str, int]]


class TokenStore(Protocol):
    """Where the current token of one AppID is kept and who may fetch the next."""

    #: The AppID whose token this is ("" when unknown); metrics are labelled with it.
    appid: str

    def get(self) -> tuple[str | None, float, float]:
        """(token, seconds left, refresh margin seconds); (None, 0, 0) when there is none."""
        ...

    def put(self, token: str, ttl_s: float, margin_s: float) -> None:
        """Store ``token`` for ``ttl_s`` seconds, to be refreshed ``margin_s`` before its end."""
        ...

    def invalidate(self, token: str) -> bool:
        """Forget ``token`` if it is still the stored one; True if it was."""
        ...

    def last_failed(self) -> str | None:
        """The last token forgotten by ``invalidate``, while remembered."""
        ...

    def try_lock(self, owner: str) -> bool:
        """Take the fetch lock for ``owner`` unless another holds it."""
        ...

    def unlock(self, owner: str) -> None:
        """Release the fetch lock if ``owner`` still holds it."""
        ...


class MemoryTokenStore:
    """A ``TokenStore`` inside one process (one-off CLI use without Redis)."""

    def __init__(self, appid: str = "") -> None:
        self.appid = appid
        self._lock = threading.Lock()
        self._token: str | None = None
        self._expires_at = 0.0
        self._margin_s = 0.0
        self._failed: tuple[str, float] | None = None
        self._owner: tuple[str, float] | None = None

    def get(self) -> tuple[str | None, float, float]:
        with self._lock:
            left = self._expires_at - time.monotonic()
            if self._token is None or left <= 0:
                return None, 0.0, 0.0
            return self._token, left, self._margin_s

    def put(self, token: str, ttl_s: float, margin_s: float) -> None:
        with self._lock:
            self._token, self._expires_at = token, time.monotonic() + ttl_s
            self._margin_s = margin_s

    def invalidate(self, token: str) -> bool:
        with self._lock:
            if self._token != token:
                return False
            self._token = None
            self._failed = (token, time.monotonic() + FAILED_MEMORY_S)
            return True

    def last_failed(self) -> str | None:
        with self._lock:
            if self._failed and self._failed[1] > time.monotonic():
                return self._failed[0]
            return None

    def try_lock(self, owner: str) -> bool:
        with self._lock:
            now = time.monotonic()
            if self._owner and self._owner[1] > now:
                return False
            self._owner = (owner, now + LOCK_TIMEOUT_S)
            return True

    def unlock(self, owner: str) -> None:
        with self._lock:
            if self._owner and self._owner[0] == owner:
                self._owner = None


class RedisTokenStore:
    """A ``TokenStore`` in Redis, shared by every process and host of one AppID.

    Keys: ``tagsync:{appid}:token`` (hash: token, refresh_below_ms; TTL = validity),
    ``tagsync:{appid}:token:lock`` and ``tagsync:{appid}:token:failed``.
    """

    def __init__(self, redis: Redis, appid: str) -> None:
        self.appid = appid
        self._redis = redis
        base = f"tagsync:{{{appid}}}:token"
        self._key, self._lock_key, self._failed_key = base, f"{base}:lock", f"{base}:failed"
        self._invalidate = load_script(redis, "worker.wechat", "token_invalidate.lua")
        self._release = load_script(redis, "worker.wechat", "lock_release.lua")

    def __repr__(self) -> str:
        return f"RedisTokenStore(key={self._key!r})"

    def get(self) -> tuple[str | None, float, float]:
        pipe = self._redis.pipeline(transaction=True)
        pipe.hmget(self._key, ["token", "refresh_below_ms"])
        pipe.pttl(self._key)
        (token, margin_ms), ttl_ms = pipe.execute()
        if token is None or ttl_ms <= 0:
            return None, 0.0, 0.0
        token = token.decode() if isinstance(token, bytes) else token
        # Tokens fetched by other processes must be masked here too.
        REDACTOR.add(token)
        return token, ttl_ms / 1000, float(margin_ms or 0) / 1000

    def put(self, token: str, ttl_s: float, margin_s: float) -> None:
        pipe = self._redis.pipeline(transaction=True)
        pipe.delete(self._key)
        pipe.hset(self._key, mapping={"token": token, "refresh_below_ms": int(margin_s * 1000)})
        pipe.pexpire(self._key, max(1, int(ttl_s * 1000)))
        pipe.execute()

    def invalidate(self, token: str) -> bool:
        keys = [self._key, self._failed_key]
        return bool(self._invalidate(keys=keys, args=[token, int(FAILED_MEMORY_S * 1000)]))

    def ttl_ms(self) -> int:
        """Milliseconds the stored token has left (0 or less: none is stored)."""
        return int(self._redis.pttl(self._key))

    def clear(self) -> None:
        """Forget the stored token (one had with credentials since replaced)."""
        self._redis.delete(self._key)

    def last_failed(self) -> str | None:
        value = self._redis.get(self._failed_key)
        return value.decode() if isinstance(value, bytes) else value

    def try_lock(self, owner: str) -> bool:
        return bool(self._redis.set(self._lock_key, owner, nx=True, px=int(LOCK_TIMEOUT_S * 1000)))

    def unlock(self, owner: str) -> None:
        self._release(keys=[self._lock_key], args=[owner])


class TokenProvider:
    """Hands out the current access token, fetching a new one in one process at a time."""

    def __init__(
        self, fetch: Fetcher, store: TokenStore, *, wait_s: float = LOCK_TIMEOUT_S
    ) -> None:
        self._fetch = fetch
        self._store = store
        self._wait_s = wait_s
        #: How many tokens this process fetched (metrics read it).
        self.fetches = 0
        # At 0 from the start, so the first refresh is an increase Prometheus sees.
        self._refreshes = TOKEN_REFRESHES.labels(store.appid)
        #: The token last read or fetched, and until when (monotonic) it is used unasked.
        self._local: tuple[str, float] | None = None

    def __repr__(self) -> str:
        return f"TokenProvider(store={self._store!r})"

    def token(self) -> str:
        """A valid access token: the stored one, or a fresh one if it is missing or ending."""
        local = self._local
        if local is not None and time.monotonic() < local[1]:
            return local[0]
        token, use_for_s = self._current()
        self._local = (token, time.monotonic() + min(LOCAL_TTL_S, use_for_s))
        return token

    def _current(self) -> tuple[str, float]:
        """The token from the store (or fetched), and how long it may be used unasked."""
        deadline = time.monotonic() + self._wait_s
        owner = uuid.uuid4().hex
        while True:
            token, left, margin = self._store.get()
            if token is not None and left > margin:
                return token, left - margin
            if self._store.try_lock(owner):
                try:
                    return self._refresh()
                finally:
                    self._store.unlock(owner)
            if token is not None:
                # Another process is fetching; the current token is still valid meanwhile.
                return token, 0.0
            if time.monotonic() >= deadline:
                raise TokenUnavailable("no access token: another process holds the fetch lock")
            time.sleep(POLL_INTERVAL_S)

    def invalidate(self, token: str) -> None:
        """Report that WeChat rejected ``token``; the next ``token()`` gets a new one."""
        self._local = None
        self._store.invalidate(token)

    def _refresh(self) -> tuple[str, float]:
        """A fresh token (or one another process just stored), and how long it may be used
        before the store is asked again."""
        # Under the lock: another process may have refreshed between our look and the lock.
        token, left, margin = self._store.get()
        if token is not None and left > margin:
            return token, left - margin
        new, expires_in = self._fetch_counted(False)
        if new in (token, self._store.last_failed()):
            # stable_token hands out the same token while WeChat thinks it valid: near its
            # end, or after WeChat rejected it, only a forced refresh gives a new one.
            new, expires_in = self._fetch_counted(True)
        return self._keep(new, expires_in)

    def verify(self) -> str:
        """Fetch a token from WeChat now, whatever the cache holds, and keep it.

        A worker's start check: a cached token proves neither the secret nor the API base.
        stable_token answers the current token (nothing is invalidated); the classic call
        answers a new one, which replaces the cached one for every process.
        """
        new, expires_in = self._fetch_counted(False)
        return self._keep(new, expires_in)[0]

    def _keep(self, token: str, expires_in: int) -> tuple[str, float]:
        """Store a fetched token; it, and how long it is used before it is refreshed."""
        REDACTOR.add(token)
        ttl = max(1.0, expires_in - min(EXPIRY_SAFETY_S, expires_in * 0.1))
        margin = min(MAX_REFRESH_MARGIN_S, ttl * REFRESH_SHARE)
        self._store.put(token, ttl, margin)
        self._local = None  # the next token() reads what was just stored
        return token, ttl - margin

    def _fetch_counted(self, force_refresh: bool) -> tuple[str, int]:
        """One fetch, counted as a refresh or as a failure with its errcode."""
        try:
            fetched = self._fetch(force_refresh)
        except WeChatError as exc:
            errcode = "network" if exc.errcode is None else str(exc.errcode)
            TOKEN_REFRESH_FAILURES.labels(self._store.appid, errcode).inc()
            raise
        self.fetches += 1
        self._refreshes.inc()
        return fetched
