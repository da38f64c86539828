"""Access tokens as WeChat hands them out: issued, replaced, expired, revoked and checked."""

from __future__ import annotations

import secrets
import string
import time
from collections.abc import Iterable

#: How long a token stays valid after a newer one was fetched, in seconds.
OLD_TOKEN_GRACE_S = 300.0
#: Tokens dead this long are forgotten (a long run must not grow without bound), s.
FORGET_AFTER_S = 3600.0
#: The kind of a token the app fetched itself (`token`, `stable_token`).
OWN = "own"
#: The kind of a token a third-party platform fetched for the app (`api_authorizer_token`).
AUTHORIZER = "authorizer"


class TokenBook:
    """The tokens of one app: which are valid until when, and the current stable token.

    Tokens come in kinds: a new token cuts short only the older tokens of its own kind, as
    an app's own token and the one its third-party platform holds do not replace each other.
    """

    def __init__(self) -> None:
        #: token -> expiry (monotonic seconds)
        self._expiry: dict[str, float] = {}
        #: token -> its kind (``OWN`` or ``AUTHORIZER``)
        self._kind: dict[str, str] = {}
        self.stable: str | None = None
        #: Tokens fetched (every successful call of `token`, `stable_token` and, for this
        #: app, `component/api_authorizer_token`).
        self.fetches = 0

    def check(self, token: str | None) -> int:
        """0 for a valid token, else the errcode WeChat answers for it."""
        if not token:
            return 41001
        expiry = self._expiry.get(token)
        if expiry is None:
            return 40001 if len(token) == 64 and token.isalnum() else 40014
        return 42001 if time.monotonic() >= expiry else 0

    def issue(self, ttl_s: float, *, kind: str = OWN) -> tuple[str, float]:
        """A new token; the older ones of its kind stay valid for 5 minutes at most."""
        now = time.monotonic()
        kept = {t: e for t, e in self._expiry.items() if e > now - FORGET_AFTER_S}
        self._expiry = {
            t: min(e, now + OLD_TOKEN_GRACE_S) if self._kind[t] == kind else e
            for t, e in kept.items()
        }
        self._kind = {t: self._kind[t] for t in kept}
        alphabet = string.ascii_letters + string.digits
        token = "".join(secrets.choice(alphabet) for _ in range(64))
        self._expiry[token] = now + ttl_s
        self._kind[token] = kind
        return token, ttl_s

    def left_s(self, token: str) -> float:
        """Seconds until ``token`` expires."""
        return self._expiry.get(token, 0.0) - time.monotonic()

    def knows(self, token: str) -> bool:
        """True while ``token`` is remembered (valid, or dead for less than an hour)."""
        return token in self._expiry

    def expire_all(self) -> None:
        """Every issued token expires now: later calls get 42001."""
        now = time.monotonic()
        self._expiry = dict.fromkeys(self._expiry, now)

    def revoke(self, tokens: Iterable[str]) -> int:
        """Forget ``tokens`` (later calls with them get 40001); how many were known."""
        revoked = 0
        for token in tokens:
            if self._expiry.pop(token, None) is not None:
                self._kind.pop(token, None)
                revoked += 1
        return revoked
