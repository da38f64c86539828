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

#: Every name ``_PARAM`` masks contains one of these: a text without them (case-folded, a
#: superset of what IGNORECASE matches) is not searched, which is most of a log line's cost.
_PARAM_WORDS = ("token", "secret")


def _mask_params(text: str) -> str:
    folded = text.casefold()
    if not any(word in folded for word in _PARAM_WORDS):
        return text
    return _PARAM.sub(lambda m: m.group("key") + MASK, text)


#: The characters of tokens and app secrets: a known value made only of them lies inside
#: one run of them in any text, so only such runs at least as long as it are searched.
_WORD_CHARS = r"[A-Za-z0-9_\-]"
_WORD = re.compile(_WORD_CHARS + "+")
#: Known values are indexed by this many leading characters (the shortest kept is 8).
_PREFIX = 8


class Redactor:
    """Masks known secret values and credential-shaped parameters in text.

    Known values are found through an index of their first characters, not one regex of
    them all: that regex was compiled again for every new token, and a process serving
    200 accounts spent a sixth of its CPU compiling it (and each search grew with it)."""

    def __init__(self) -> None:
        self._values: set[str] = set()
        self._lock = threading.Lock()
        #: value[:_PREFIX] -> the values starting so, longest first.
        self._by_prefix: dict[str, tuple[str, ...]] = {}
        self._shortest = 0
        #: Runs of ``_WORD`` characters at least ``_shortest`` long.
        self._long_word = _WORD
        #: Values with a character outside ``_WORD`` (searched for one by one).
        self._odd: tuple[str, ...] = ()

    def add(self, value: str | None) -> None:
        """Remember a secret value so that it is masked wherever it appears."""
        # Very short values would mask ordinary words; real secrets are 32+ characters.
        if not value or len(value) < _PREFIX or value in self._values:
            return
        with self._lock:
            if value in self._values:
                return
            if _WORD.fullmatch(value) is None:
                self._odd = tuple(sorted((*self._odd, value), key=len, reverse=True))
            else:
                # Shortest first: a search meanwhile must not skip words the value fits in.
                shortest = min(self._shortest or len(value), len(value))
                if shortest != self._shortest:
                    # Runs shorter than every value are skipped by the regex, not in Python.
                    self._long_word = re.compile(_WORD_CHARS + f"{{{shortest},}}")
                    self._shortest = shortest
                same = (*self._by_prefix.get(value[:_PREFIX], ()), value)
                self._by_prefix[value[:_PREFIX]] = tuple(sorted(same, key=len, reverse=True))
            self._values.add(value)

    def redact(self, text: str) -> str:
        """``text`` with every secret masked."""
        if self._values:
            text = self._mask_known(text)
        return _mask_params(text)

    def _mask_known(self, text: str) -> str:
        for value in self._odd:
            text = text.replace(value, MASK)
        if not self._by_prefix:
            return text
        return self._long_word.sub(lambda word: self._mask_word(word.group()), text)

    def _mask_word(self, word: str) -> str:
        """``word`` (one run of ``_WORD`` characters) with the known values in it masked:
        leftmost first, and the longest value at each position, as one regex of the values
        (longest first) would match."""
        by_prefix, shortest = self._by_prefix, self._shortest
        parts: list[str] = []
        last = position = 0
        while position <= len(word) - shortest:
            for value in by_prefix.get(word[position : position + _PREFIX], ()):
                if word.startswith(value, position):
                    parts += [word[last:position], MASK]
                    position = last = position + len(value)
                    break
            else:
                position += 1
        return "".join(parts) + word[last:] if parts else word

    def redact_fields(self, value: Any) -> Any:
        """Strings inside nested dicts, lists and tuples (a log event's fields, before it is
        rendered) with credential parameters and the odd known values masked; other values
        pass. Known values made of token characters are left to ``redact`` of the rendered
        line: rendering escapes none of their characters, and a search per field was a
        third of a log line's cost."""
        if isinstance(value, str):
            for secret in self._odd:
                value = value.replace(secret, MASK)
            return _mask_params(value)
        if isinstance(value, dict):
            return {k: self.redact_fields(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return type(value)(self.redact_fields(v) for v in value)
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
