"""Access tokens as WeChat hands them out: issued, replaced, expired and checked."""

from __future__ import annotations

import secrets
import string
import time

#: How long a token stays valid after a newer one was fetched, in seconds.
OLD_TOKEN_GRACE_S = 300.0
#: Tokens dead this long are forgotten (a long run must not grow without bound), s.
FORGET_AFTER_S = 3600.0


class TokenBook:
    """The tokens of one app: which are valid until when, and the current stable token."""

    def __init__(self) -> None:
        #: token -> expiry (monotonic seconds)
        self._expiry: dict[str, float] = {}
        self.stable: str | None = None
        #: Tokens fetched (every successful call of `token` or `stable_token`).
        self.fetches = 0

    def check(self, token: str | None) -> int:
        """0 for a valid token, else the errcode WeChat answers for it."""
        if not token:
            return 41001
        expiry = self._expiry.get(token)
        if expiry is None:
            return 40001 if len(token) == 64 and token.isalnum() else 40014
        return 42001 if time.monotonic() >= expiry else 0

    def issue(self, ttl_s: float) -> tuple[str, float]:
        """A new token; the older ones stay valid for 5 minutes at most."""
        now = time.monotonic()
        self._expiry = {
            t: min(e, now + OLD_TOKEN_GRACE_S)
            for t, e in self._expiry.items()
            if e > now - FORGET_AFTER_S
        }
        alphabet = string.ascii_letters + string.digits
        token = "".join(secrets.choice(alphabet) for _ in range(64))
        self._expiry[token] = now + ttl_s
        return token, ttl_s

    def left_s(self, token: str) -> float:
        """Seconds until ``token`` expires."""
        return self._expiry.get(token, 0.0) - time.monotonic()

    def expire_all(self) -> None:
        """Every issued token expires now: later calls get 42001."""
        now = time.monotonic()
        self._expiry = dict.fromkeys(self._expiry, now)
