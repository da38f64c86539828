"""Progress of long commands on stderr (reconcile, exports): a line redrawn in place on a
terminal, else a line every few seconds, so logs are not flooded."""

from __future__ import annotations

import time
from typing import TextIO

#: Seconds between two progress lines when stderr is not a terminal.
PROGRESS_EVERY_S = 5.0
#: Seconds between two redraws of the progress line on a terminal.
REDRAW_EVERY_S = 0.2


class Progress:
    """Progress on stderr: a line redrawn in place on a terminal, else a line now and then."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.live = stream.isatty()
        self._last = time.monotonic()
        self._printed = False

    def show(self, text: str) -> None:
        """Report ``text`` if it is time to (cheap to call often)."""
        now = time.monotonic()
        if now - self._last < (REDRAW_EVERY_S if self.live else PROGRESS_EVERY_S):
            return
        self._last = now
        self._printed = True
        if self.live:
            self.stream.write(f"\r{text}\033[K")
        else:
            self.stream.write(f"{text}\n")
        self.stream.flush()

    def done(self, text: str) -> None:
        """End a phase: its last word, if anything of it was shown."""
        if self._printed:
            self.stream.write(f"\r{text}\033[K\n" if self.live else f"{text}\n")
            self.stream.flush()
        self._printed = False
        self._last = time.monotonic()
