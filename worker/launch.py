"""How a tagsync worker process group is started: one place for the command and its env."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Mapping

#: How often (ms) an idle dramatiq consumer looks at its queue again. dramatiq's 1,000 ms
#: would leave a rescheduled flush (after a rate-limit wait, say) idle up to a second.
WORKER_TIMEOUT_MS = 100


def dramatiq_command(*, processes: int, threads: int) -> list[str]:
    """The command that runs dramatiq with tagsync's actors (and tagsync's logging)."""
    return [
        sys.executable, "-m", "worker.dramatiq_main", "worker.actors",
        "--processes", str(processes), "--threads", str(threads),
    ]  # fmt: skip


def metrics_dir(env: Mapping[str, str]) -> str:
    """The directory where worker processes write their metrics (one per metrics port)."""
    port = env.get("TAGSYNC_METRICS_PORT") or "9191"
    return env.get("PROMETHEUS_MULTIPROC_DIR") or os.path.join(
        tempfile.gettempdir(), f"tagsync-metrics-{port}"
    )


def dramatiq_env(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` plus what dramatiq and prometheus-client read at import time.

    The metrics directory is wiped here, before any process starts: files left by an
    earlier run would be summed into this run's counters.
    """
    directory = metrics_dir(env)
    shutil.rmtree(directory, ignore_errors=True)
    os.makedirs(directory, exist_ok=True)
    port = env.get("TAGSYNC_METRICS_PORT") or "9191"
    return {
        "dramatiq_worker_timeout": str(WORKER_TIMEOUT_MS),
        **env,
        "PROMETHEUS_MULTIPROC_DIR": directory,
        "dramatiq_prom_db": directory,
        "dramatiq_prom_port": port,
    }
