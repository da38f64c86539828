"""Who carries which tag, by fan position: O(1) per fan, O(page) per page, no strings kept.

Every fan of an app has a position in the fan directory's listing order, which never
changes (fans are only ever appended). A tag's members are one byte per position (1: the
fan carries the tag), so tagging and untagging a fan is O(1), a million new fans are tagged
with one slice assignment, and the count is kept beside the bytes. ``user/tag/get`` pages
in position order: a page after position ``p`` is ``bytearray.find`` (memchr) from
``p + 1``, O(page) for a tag that is not sparse and a C scan over the gap otherwise (a
million-fan app is one megabyte). A fan untagged since the last page simply is not found,
and the page after a cursor whose fan left the tag still starts right after its position.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

#: The byte of a position whose fan carries the tag.
_MEMBER = 1


class Members:
    """The fans of one tag, as positions in the app's fan listing order."""

    __slots__ = ("_bytes", "count")

    def __init__(self) -> None:
        self._bytes = bytearray()
        #: How many fans carry the tag (kept, so ``tags/get`` is O(1) per tag).
        self.count = 0

    def __len__(self) -> int:
        return self.count

    def __contains__(self, position: int) -> bool:
        return position < len(self._bytes) and self._bytes[position] == _MEMBER

    def add(self, position: int) -> bool:
        """Tag the fan at ``position``; False if it carried the tag already."""
        if position in self:
            return False
        if position >= len(self._bytes):
            self._bytes.extend(bytes(position + 1 - len(self._bytes)))
        self._bytes[position] = _MEMBER
        self.count += 1
        return True

    def discard(self, position: int) -> bool:
        """Untag the fan at ``position``; False if it did not carry the tag."""
        if position not in self:
            return False
        self._bytes[position] = 0
        self.count -= 1
        return True

    def add_new(self, start: int, count: int) -> None:
        """Tag the fans at ``start`` to ``start + count``, none of which carries the tag."""
        end = start + count
        if end > len(self._bytes):
            self._bytes.extend(bytes(end - len(self._bytes)))
        self._bytes[start:end] = bytes([_MEMBER]) * count
        self.count += count

    def after(self, position: int, limit: int) -> list[int]:
        """Up to ``limit`` members after ``position`` (-1: from the first), in order."""
        found: list[int] = []
        find = self._bytes.find
        at = find(_MEMBER, position + 1)
        while at != -1 and len(found) < limit:
            found.append(at)
            at = find(_MEMBER, at + 1)
        return found

    def __iter__(self) -> Iterator[int]:
        """Every member's position, in order."""
        find = self._bytes.find
        at = find(_MEMBER)
        while at != -1:
            yield at
            at = find(_MEMBER, at + 1)


class TagCounts:
    """How many tags each fan carries, by position (the max-tags-per-fan rule, 45059).

    A fan carries at most as many tags as an account may have (100), so one byte each.
    """

    __slots__ = ("_bytes",)

    def __init__(self) -> None:
        self._bytes = bytearray()

    def __getitem__(self, position: int) -> int:
        return self._bytes[position] if position < len(self._bytes) else 0

    def increment(self, position: int) -> None:
        """One more tag on the fan at ``position``."""
        if position >= len(self._bytes):
            self._bytes.extend(bytes(position + 1 - len(self._bytes)))
        self._bytes[position] += 1

    def decrement(self, positions: Iterable[int]) -> None:
        """One tag fewer on each fan of ``positions`` (each carries one)."""
        counts = self._bytes
        for position in positions:
            counts[position] -= 1

    def set_new(self, start: int, count: int) -> None:
        """The fans at ``start`` to ``start + count`` are new and now carry one tag."""
        end = start + count
        if end > len(self._bytes):
            self._bytes.extend(bytes(end - len(self._bytes)))
        self._bytes[start:end] = bytes([1]) * count
