"""Keep the app secret and access tokens out of logs, errors, reprs and dead letters.

Two nets: every secret value this process has seen (the app secret, each token fetched or
read from Redis) is replaced wherever it appears, and anything shaped like a credential
parameter (``access_token=...``, ``"secret": "..."``) is masked even if its value was
never seen here (a token fetched by another process, inside a URL).
"""

from __future__ import annotations

import re
import threading
from typing import Any

#: What a redacted value is replaced with.
MASK = "***"

_PARAM = re.compile(
    r"(?P<key>(?:access_token|secret|appsecret|refresh_token)\b[\"']?\s*[=:]\s*[\"']?)"
    # No backslash in a value: in a rendered JSON line an escaped quote (\") must stay whole;
    # the raw field values are masked before rendering, where those quotes are plain.
    r"(?P<value>[^\s&\"',;}\\]+)",
    re.IGNORECASE,
)


class Redactor:
    """Masks known secret values and credential-shaped parameters in text."""

    def __init__(self) -> None:
        self._values: set[str] = set()
        self._lock = threading.Lock()
        self._pattern: re.Pattern[str] | None = None

    def add(self, value: str | None) -> None:
        """Remember a secret value so that it is masked wherever it appears."""
        # Very short values would mask ordinary words; real secrets are 32+ characters.
        if not value or len(value) < 8 or value in self._values:
            return
        with self._lock:
            self._values.add(value)
            ordered = sorted(self._values, key=len, reverse=True)
            self._pattern = re.compile("|".join(re.escape(v) for v in ordered))

    def redact(self, text: str) -> str:
        """``text`` with every secret masked."""
        pattern = self._pattern
        if pattern is not None:
            text = pattern.sub(MASK, text)
        return _PARAM.sub(lambda m: m.group("key") + MASK, text)

    def redact_value(self, value: Any) -> Any:
        """Redact strings inside nested dicts, lists and tuples; other values pass."""
        if isinstance(value, str):
            return self.redact(value)
        if isinstance(value, dict):
            return {k: self.redact_value(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return type(value)(self.redact_value(v) for v in value)
        return value


#: The process-wide redactor: the client registers secrets and tokens as it meets them.
REDACTOR = Redactor()


def redact(text: str) -> str:
    """``text`` with every known secret and credential parameter masked."""
    return REDACTOR.redact(text)


class Secret:
    """A string that never shows itself in ``repr``, ``str`` or f-strings."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value
        REDACTOR.add(value)

    def reveal(self) -> str:
        """The secret value, for the one place that must send it."""
        return self._value

    def __repr__(self) -> str:
        return f"Secret({MASK!r})"

    __str__ = __repr__

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)
