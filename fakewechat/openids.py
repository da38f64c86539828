"""The simulator's fans: deterministic, realistic-looking openids that cost no memory.

A real openid is 28 characters of ``[A-Za-z0-9_-]`` that start with a prefix shared by
every fan of one AppID. Here fan number ``i`` is ``prefix + base64url(mac(i) + i)``: the
MAC makes the openid look random and lets ``index_of`` tell a fan from a forgery in O(1)
without storing a million strings.
"""

from __future__ import annotations

import base64
import hashlib
import re
import threading
from collections.abc import Iterable

#: Length of every openid WeChat hands out.
OPENID_LENGTH = 28
#: Length of the part of an openid that is the same for every fan of one AppID.
PREFIX_LENGTH = 6
#: What a well-formed openid looks like (of this AppID or another one).
OPENID_PATTERN = re.compile(rf"[A-Za-z0-9_-]{{{OPENID_LENGTH}}}")


def prefix_for(appid: str) -> str:
    """The openid prefix of an AppID: ``o`` and five characters derived from it."""
    digest = base64.urlsafe_b64encode(hashlib.sha256(appid.encode()).digest()).decode()
    return "o" + digest[: PREFIX_LENGTH - 1]


class FanDirectory:
    """Which openids are fans of one AppID, in a stable order.

    Fans are segments appended in order: ranges of deterministic fans (``--fans N``,
    ``{"count": N}``) and explicit openids (``{"openids": [...]}``), so adding fans never
    moves the ones listed before.
    """

    def __init__(self, appid: str, *, seed: int = 0, count: int = 0) -> None:
        self.appid = appid
        self.prefix = prefix_for(appid)
        self._key = hashlib.sha256(f"{appid}:{seed}".encode()).digest()[:16]
        self._generated = 0
        self._explicit: set[str] = set()
        self._seen: set[str] = set()
        # (start, end) ranges of fan indexes, or explicit openid lists, in listing order.
        self._segments: list[tuple[int, int] | list[str]] = []
        self._total = 0
        self._lock = threading.Lock()
        self.add_count(count, listed=False)

    @property
    def total(self) -> int:
        """How many fans there are."""
        return self._total

    def openid(self, index: int) -> str:
        """The openid of deterministic fan ``index``."""
        return _encode(index, self.prefix, self._key)

    def _index_of(self, openid: str) -> int | None:
        """The fan index encoded in ``openid`` if its MAC checks out, whatever its range."""
        if len(openid) != OPENID_LENGTH or not openid.startswith(self.prefix):
            return None
        try:
            raw = base64.urlsafe_b64decode(openid[PREFIX_LENGTH:] + "==")
        except ValueError:
            return None
        if len(raw) != 16 or _mac(raw[8:], self._key) != raw[:8]:
            return None
        return _feistel(int.from_bytes(raw[8:], "big"), self._key, decrypt=True)

    def is_fan(self, openid: str) -> bool:
        """True if ``openid`` follows this AppID."""
        if openid in self._explicit or openid in self._seen:
            return True
        index = self._index_of(openid)
        if index is not None and index < self._generated:
            # Fans never leave, so a positive answer can be remembered: decoding costs
            # five hashes, and every batch call checks fifty openids.
            self._seen.add(openid)
            return True
        return False

    def is_foreign(self, openid: str) -> bool:
        """True if ``openid`` is well formed but carries another AppID's prefix (49003)."""
        return bool(OPENID_PATTERN.fullmatch(openid)) and not openid.startswith(self.prefix)

    def add_count(self, count: int, *, listed: bool = True) -> list[str]:
        """Add ``count`` new deterministic fans; return their openids if ``listed``."""
        if count <= 0:
            return []
        with self._lock:
            start = self._generated
            self._generated += count
            self._segments.append((start, start + count))
            self._total += count
        return [self.openid(i) for i in range(start, start + count)] if listed else []

    def add_openids(self, openids: Iterable[str]) -> list[str]:
        """Add explicit openids (well formed, this AppID's prefix); return the new ones."""
        added: list[str] = []
        with self._lock:
            for openid in openids:
                if not OPENID_PATTERN.fullmatch(openid) or not openid.startswith(self.prefix):
                    raise ValueError(f"not an openid of this AppID: {openid!r}")
                if self.is_fan(openid) or openid in added:
                    continue
                added.append(openid)
            self._explicit.update(added)
            if added:
                self._segments.append(added)
                self._total += len(added)
        return added

    def foreign(self, count: int) -> list[str]:
        """``count`` well-formed openids of another AppID (they answer 49003)."""
        other = self.appid + ":foreign"
        key = hashlib.sha256(other.encode()).digest()[:16]
        return [_encode(i, prefix_for(other), key) for i in range(count)]

    def page(self, offset: int, limit: int) -> list[str]:
        """Fans ``offset`` to ``offset + limit`` in the stable listing order."""
        result: list[str] = []
        position = 0
        for segment in list(self._segments):
            size = segment[1] - segment[0] if isinstance(segment, tuple) else len(segment)
            if position + size <= offset:
                position += size
                continue
            skip = max(0, offset - position)
            want = limit - len(result)
            if isinstance(segment, tuple):
                first = segment[0] + skip
                last = min(segment[1], first + want)
                result.extend(self.openid(i) for i in range(first, last))
            else:
                result.extend(segment[skip : skip + want])
            position += size
            if len(result) >= limit:
                break
        return result


def _mac(data: bytes, key: bytes) -> bytes:
    return hashlib.blake2b(data, key=key, digest_size=8).digest()


def _feistel(value: int, key: bytes, *, decrypt: bool = False) -> int:
    """A keyed permutation of 64-bit integers, so consecutive fans look unrelated."""
    left, right = value >> 32, value & 0xFFFFFFFF
    rounds = range(3, -1, -1) if decrypt else range(4)
    for round_ in rounds:
        mix = int.from_bytes(
            hashlib.blake2b(
                right.to_bytes(4, "big"), key=key, digest_size=4, salt=bytes([round_]) * 16
            ).digest(),
            "big",
        )
        left, right = right, left ^ mix
    # The halves end swapped; swapping back makes decryption the same walk in reverse.
    return (right << 32) | left


def _encode(index: int, prefix: str, key: bytes) -> str:
    scrambled = _feistel(index, key).to_bytes(8, "big")
    suffix = base64.urlsafe_b64encode(_mac(scrambled, key) + scrambled).decode().rstrip("=")
    return prefix + suffix
