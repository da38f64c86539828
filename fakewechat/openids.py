"""The simulator's fans: deterministic, realistic-looking openids that cost no memory.

A real openid is 28 characters of ``[A-Za-z0-9_-]`` that start with a prefix shared by
every fan of one AppID. Here fan number ``i`` is ``prefix + base64url(mac(i) + i)``: the
MAC makes the openid look random and lets the directory tell a fan from a forgery in O(1)
without storing a million strings.

Every fan also has a *position*: its place in the directory's stable listing order, which
never changes since fans are only appended. Tags hold positions, not strings
(``fakewechat.members``), and the directory turns one into the other both ways.
"""

from __future__ import annotations

import base64
import bisect
import hashlib
import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass

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


@dataclass(frozen=True, slots=True)
class _Range:
    """Deterministic fans ``start`` to ``end`` (indexes), listed from ``position`` on."""

    position: int
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class _Listed:
    """Explicit openids, listed from ``position`` on."""

    position: int
    openids: list[str]


class FanDirectory:
    """Which openids are fans of one AppID, in a stable order.

    Fans are segments appended in order: ranges of deterministic fans (``--fans N``,
    ``{"count": N}``) and explicit openids (``{"openids": [...]}``), so adding fans never
    moves the ones listed before. Position -> openid is a bisection over the segments;
    openid -> position decodes a deterministic openid (remembered once seen) or looks an
    explicit one up.
    """

    def __init__(self, appid: str, *, seed: int = 0, count: int = 0) -> None:
        self.appid = appid
        self.prefix = prefix_for(appid)
        self._codec = _Codec(self.prefix, hashlib.sha256(f"{appid}:{seed}".encode()).digest()[:16])
        self._generated = 0
        # openid -> position, for explicit fans and for deterministic ones seen before.
        self._explicit: dict[str, int] = {}
        self._seen: dict[str, int] = {}
        # position -> openid for those seen ones: the fans tagged through the API are
        # listed without spelling them again.
        self._spelled: dict[int, str] = {}
        # Segments in listing order, and the deterministic ranges in index order (the same
        # order: indexes are handed out as ranges are appended).
        self._segments: list[_Range | _Listed] = []
        self._ranges: list[_Range] = []
        self._total = 0
        self._lock = threading.Lock()
        self.add_range(count)

    @property
    def total(self) -> int:
        """How many fans there are."""
        return self._total

    def openid(self, index: int) -> str:
        """The openid of deterministic fan ``index``."""
        return self._codec.encode(index)

    def position_of(self, openid: str) -> int | None:
        """The listing position of fan ``openid``; None if it does not follow this AppID."""
        position = self._explicit.get(openid)
        if position is None:
            position = self._seen.get(openid)
        if position is not None:
            return position
        index = self._codec.decode(openid)
        if index is None or index >= self._generated:
            return None
        ranges = self._ranges
        found = ranges[bisect.bisect_right(ranges, index, key=_start) - 1]
        position = found.position + index - found.start
        # Fans never leave, so a positive answer can be remembered: decoding costs five
        # hashes, and every batch call checks fifty openids.
        self._seen[openid] = position
        self._spelled[position] = openid
        return position

    def is_fan(self, openid: str) -> bool:
        """True if ``openid`` follows this AppID."""
        return self.position_of(openid) is not None

    def is_foreign(self, openid: str) -> bool:
        """True if ``openid`` is well formed but carries another AppID's prefix (49003)."""
        return bool(OPENID_PATTERN.fullmatch(openid)) and not openid.startswith(self.prefix)

    def add_range(self, count: int) -> int:
        """Add ``count`` new deterministic fans without spelling them; their first position."""
        with self._lock:
            position = self._total
            if count <= 0:
                return position
            segment = _Range(position, self._generated, self._generated + count)
            self._segments.append(segment)
            self._ranges.append(segment)
            self._generated += count
            self._total += count
            return position

    def add_count(self, count: int, *, listed: bool = True) -> list[str]:
        """Add ``count`` new deterministic fans; return their openids if ``listed``."""
        position = self.add_range(count)
        return self.openids_at(range(position, position + count)) if listed else []

    def add_openids(self, openids: Iterable[str]) -> list[str]:
        """Add explicit openids (well formed, this AppID's prefix); return the new ones.

        All are checked before any is added: a bad one (``ValueError``) adds nothing.
        """
        added: dict[str, None] = {}
        with self._lock:
            for openid in openids:
                if (
                    not isinstance(openid, str)
                    or not OPENID_PATTERN.fullmatch(openid)
                    or not openid.startswith(self.prefix)
                ):
                    raise ValueError(f"not an openid of this AppID: {openid!r}")
                if openid not in added and not self.is_fan(openid):
                    added[openid] = None
            if added:
                segment = _Listed(self._total, list(added))
                for offset, openid in enumerate(segment.openids):
                    self._explicit[openid] = segment.position + offset
                self._segments.append(segment)
                self._total += len(added)
        return list(added)

    def foreign(self, count: int) -> list[str]:
        """``count`` well-formed openids of another AppID (they answer 49003)."""
        other = self.appid + ":foreign"
        codec = _Codec(prefix_for(other), hashlib.sha256(other.encode()).digest()[:16])
        return codec.encode_range(0, count)

    def page(self, offset: int, limit: int) -> list[str]:
        """Fans ``offset`` to ``offset + limit`` in the stable listing order."""
        return self.openids_at(range(max(0, offset), min(self._total, offset + limit)))

    def openids_at(self, positions: Iterable[int]) -> list[str]:
        """The openids of fans at ``positions`` (ascending is fastest), in that order."""
        segments = self._segments
        encode = self._codec.encode
        spelled = self._spelled
        result: list[str] = []
        segment: _Range | _Listed | None = None
        low = high = 0
        for position in positions:
            if not low <= position < high:
                segment = segments[bisect.bisect_right(segments, position, key=_position) - 1]
                low = segment.position
                high = low + _size(segment)
            if isinstance(segment, _Range):
                known = spelled.get(position)
                result.append(known if known else encode(segment.start + position - low))
            elif segment is not None:
                result.append(segment.openids[position - low])
        return result


def _position(segment: _Range | _Listed) -> int:
    return segment.position


def _start(segment: _Range) -> int:
    return segment.start


def _size(segment: _Range | _Listed) -> int:
    return segment.end - segment.start if isinstance(segment, _Range) else len(segment.openids)


class _Codec:
    """Deterministic openids of one prefix and key: index -> openid and back.

    Fan ``i``'s 8 bytes are a keyed 4-round Feistel permutation of ``i`` (consecutive
    fans look unrelated), preceded by an 8-byte keyed MAC of them. The keyed hashers are
    made once and copied per use: a million openids take about four seconds, not six.
    """

    def __init__(self, prefix: str, key: bytes) -> None:
        self.prefix = prefix
        self._rounds = [
            hashlib.blake2b(key=key, digest_size=4, salt=bytes([round_]) * 16)
            for round_ in range(4)
        ]
        self._mac = hashlib.blake2b(key=key, digest_size=8)

    def _feistel(self, value: int, *, decrypt: bool = False) -> int:
        left, right = value >> 32, value & 0xFFFFFFFF
        for hasher in reversed(self._rounds) if decrypt else self._rounds:
            mix = hasher.copy()
            mix.update(right.to_bytes(4, "big"))
            left, right = right, left ^ int.from_bytes(mix.digest(), "big")
        # The halves end swapped; swapping back makes decryption the same walk in reverse.
        return (right << 32) | left

    def _mac_of(self, data: bytes) -> bytes:
        mac = self._mac.copy()
        mac.update(data)
        return mac.digest()

    def encode(self, index: int) -> str:
        """The openid of fan ``index``."""
        scrambled = self._feistel(index).to_bytes(8, "big")
        suffix = base64.urlsafe_b64encode(self._mac_of(scrambled) + scrambled)
        return self.prefix + suffix.decode().rstrip("=")

    def encode_range(self, start: int, end: int) -> list[str]:
        """The openids of fans ``start`` to ``end``."""
        return [self.encode(index) for index in range(start, end)]

    def decode(self, openid: str) -> int | None:
        """The fan index encoded in ``openid`` if its MAC checks out, whatever its range."""
        if len(openid) != OPENID_LENGTH or not openid.startswith(self.prefix):
            return None
        try:
            raw = base64.urlsafe_b64decode(openid[PREFIX_LENGTH:] + "==")
        except ValueError:
            return None
        if len(raw) != 16 or self._mac_of(raw[8:]) != raw[:8]:
            return None
        return self._feistel(int.from_bytes(raw[8:], "big"), decrypt=True)
