"""How a tagsync worker process group is started: one place for the command and its env."""

from __future__ import annotations

import sys
from collections.abc import Mapping

#: How often (ms) an idle dramatiq consumer looks at its queue again. dramatiq's 1,000 ms
#: would leave a rescheduled flush (after a rate-limit wait, say) idle up to a second.
WORKER_TIMEOUT_MS = 100


def dramatiq_command(*, processes: int, threads: int) -> list[str]:
    """The dramatiq command line that runs tagsync's actors."""
    return [
        sys.executable, "-m", "dramatiq", "worker.actors",
        "--processes", str(processes), "--threads", str(threads),
    ]  # fmt: skip


def dramatiq_env(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` plus what dramatiq reads at import time (it cannot be set any later)."""
    return {"dramatiq_worker_timeout": str(WORKER_TIMEOUT_MS), **env}
