"""Reconcile: which fans a tag must gain and lose, in memory that does not grow with its size.

Both sides arrive as openids in any order, possibly repeated: the desired side from a file
(a CRM export, one openid a line), the listed side from WeChat's ``user/tag/get`` pages.

    1. SortedRuns.add      each side, in chunks of ``CHUNK_SIZE``: a full chunk is sorted,
                           de-duplicated and written to a temporary file (a run)
    2. iter(SortedRuns)    ``heapq.merge`` of the runs, one line of each at a time, repeats
                           dropped: the side as one sorted stream of unique openids
    3. Diff                a merge-walk of the two sorted streams: desired only -> ("tag",
                           openid), listed only -> ("untag", openid), both -> counted as
                           unchanged

Memory holds one chunk (a side is read fully before the next begins) plus one buffered
line per run, whatever the input size; the disk holds each side once (about 29 bytes an
openid). Nothing here talks to WeChat or Redis: ``worker/cli/reconcile.py`` does.
"""

from __future__ import annotations

import heapq
import os
from collections.abc import Callable, Iterable, Iterator
from typing import NamedTuple

from producers.intents import InvalidIntent, Op, check_openid

#: Openids sorted in memory at once: the memory bound. 100,000 openids of 28 characters are
#: about 8 MB of str objects, with the list and the de-duplicating set about 15 MB.
CHUNK_SIZE = 100_000
#: Bad lines of a desired file shown in the error (every one is counted).
SHOWN_BAD_LINES = 5
#: A line starting with this is a comment in a desired file.
COMMENT = "#"
#: Lines read between two calls of a progress callback.
PROGRESS_LINES = 50_000


class BadLine(NamedTuple):
    """A line of a desired file that holds no openid: its number (from 1) and why."""

    number: int
    reason: str


class BadLines(ValueError):
    """A desired file has lines that are not openids: ``shown`` (the first few), ``total``."""

    def __init__(self, shown: list[BadLine], total: int) -> None:
        self.shown = shown
        self.total = total
        more = f" (and {total - len(shown)} more)" if total > len(shown) else ""
        first = "; ".join(f"line {bad.number}: {bad.reason}" for bad in shown)
        super().__init__(f"{total} bad lines{more}: {first}")


class SortedRuns:
    """An external sort of openids: add them in any order, iterate them sorted, once each.

    A full chunk goes to a file of ``directory`` as a sorted run without repeats; iterating
    merges the runs. A side that fits in one chunk never touches the disk.
    """

    def __init__(self, directory: str, *, name: str, chunk_size: int = CHUNK_SIZE) -> None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, not {chunk_size}")
        self.directory = directory
        self.name = name
        self.chunk_size = chunk_size
        #: Openids added, repeats included.
        self.added = 0
        self._chunk: list[str] = []
        self._runs: list[str] = []

    @property
    def runs(self) -> int:
        """Runs written to disk so far."""
        return len(self._runs)

    def add(self, openid: str) -> None:
        """Add one openid (no line breaks in it)."""
        self._chunk.append(openid)
        self.added += 1
        if len(self._chunk) >= self.chunk_size:
            self._spill()

    def extend(self, openids: Iterable[str]) -> None:
        """Add many openids."""
        for openid in openids:
            self.add(openid)

    def _spill(self) -> None:
        path = os.path.join(self.directory, f"{self.name}-{len(self._runs):05d}.run")
        run = sorted(set(self._chunk))
        self._chunk = []  # let the strings go before the next chunk fills
        with open(path, "w", encoding="ascii", newline="\n") as out:
            out.write("\n".join(run))
            out.write("\n")
        self._runs.append(path)

    def __iter__(self) -> Iterator[str]:
        """Every openid added, in sorted order, each once."""
        if not self._runs:
            yield from sorted(set(self._chunk))
            return
        if self._chunk:
            self._spill()
        files = [open(path, encoding="ascii", newline="\n") for path in self._runs]  # noqa: SIM115
        try:
            # Lines keep their "\n": it sorts below every openid character, so "ab\n" <
            # "abc\n" as "ab" < "abc", and the newline is cut once, at the end.
            previous = ""
            for line in heapq.merge(*files):
                if line != previous:
                    previous = line
                    yield line[:-1]
        finally:
            for file in files:
                file.close()


def read_desired(
    lines: Iterable[str],
    into: SortedRuns,
    *,
    progress: Callable[[int], None] | None = None,
    shown: int = SHOWN_BAD_LINES,
) -> int:
    """Check every line of a desired file and add its openid to ``into``; return lines read.

    A line holds one openid; surrounding whitespace (CRLF too), blank lines and lines
    starting with ``#`` are ignored. The whole file is read even after a bad line, then
    ``BadLines`` is raised naming the first ``shown`` and counting them all.
    """
    bad: list[BadLine] = []
    total_bad = 0
    number = 0
    for number, line in enumerate(lines, start=1):
        openid = line.strip()
        if openid and not openid.startswith(COMMENT):
            try:
                check_openid(openid)
            except InvalidIntent as exc:
                total_bad += 1
                if len(bad) < shown:
                    bad.append(BadLine(number, f"{exc.field} {exc.message}"))
            else:
                if not total_bad:  # once the file is known bad, sorting it is wasted work
                    into.add(openid)
        if progress is not None and number % PROGRESS_LINES == 0:
            progress(number)
    if total_bad:
        raise BadLines(bad, total_bad)
    return number


class Change(NamedTuple):
    """What a fan needs: ``op`` "tag" (desired, not listed) or "untag" (listed, not desired)."""

    op: Op
    openid: str


class Diff:
    """The merge-walk of two sorted streams of unique openids (``SortedRuns`` gives them).

    Iterate it once for the changes; ``to_tag``, ``to_untag`` and ``unchanged`` count them
    as they go and are final when the iteration ends.
    """

    def __init__(self, desired: Iterable[str], listed: Iterable[str]) -> None:
        self._desired = desired
        self._listed = listed
        self.to_tag = 0
        self.to_untag = 0
        self.unchanged = 0

    def __iter__(self) -> Iterator[Change]:
        desired = iter(self._desired)
        listed = iter(self._listed)
        to_tag = to_untag = unchanged = 0
        want = next(desired, None)
        have = next(listed, None)
        try:
            while want is not None and have is not None:
                if want == have:
                    unchanged += 1
                    want = next(desired, None)
                    have = next(listed, None)
                elif want < have:
                    to_tag += 1
                    yield Change("tag", want)
                    want = next(desired, None)
                else:
                    to_untag += 1
                    yield Change("untag", have)
                    have = next(listed, None)
            while want is not None:
                to_tag += 1
                yield Change("tag", want)
                want = next(desired, None)
            while have is not None:
                to_untag += 1
                yield Change("untag", have)
                have = next(listed, None)
        finally:
            self.to_tag, self.to_untag, self.unchanged = to_tag, to_untag, unchanged
