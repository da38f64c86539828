"""How a tagsync worker process group is started: one place for the command and its env."""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping

from worker.wechat.client import CONNECT_TIMEOUT_S, READ_TIMEOUT_S

#: How often (ms) an idle dramatiq consumer looks at its queue again. dramatiq's 1,000 ms
#: would leave a rescheduled flush (after a rate-limit wait, say) idle up to a second.
WORKER_TIMEOUT_MS = 100


#: What a stopping worker waits for beyond its slowest WeChat call, s: the flush's last
#: writes, putting back its fetched messages.
STOP_MARGIN_S = 5.0


def stop_timeout_s(wechat_timeout_s: float = READ_TIMEOUT_S) -> float:
    """How long a worker may take to stop on SIGTERM: its slowest WeChat call and a margin.

    Whatever stops a worker (systemd's TimeoutStopSec, Kubernetes' grace period, a
    process manager) should wait at least this long before SIGKILL.
    """
    return CONNECT_TIMEOUT_S + wechat_timeout_s + STOP_MARGIN_S


def dramatiq_command(
    *, processes: int, threads: int, wechat_timeout_s: float = READ_TIMEOUT_S
) -> list[str]:
    """The command that runs dramatiq with tagsync's actors (and tagsync's logging).

    On SIGTERM its threads finish their message, each at most one WeChat call away (a flush
    stops after the call in flight), so the stop is bounded by the call's timeouts; dramatiq's
    own default would wait 10 minutes.
    """
    stop_ms = int(stop_timeout_s(wechat_timeout_s) * 1000)
    return [
        sys.executable, "-m", "worker.runtime.dramatiq_main", "worker.actors",
        "--processes", str(processes), "--threads", str(threads),
        "--worker-shutdown-timeout", str(stop_ms),
    ]  # fmt: skip


#: Name of an instance's metrics directory, before ``{port}-{pid}``.
METRICS_DIR_PREFIX = "tagsync-metrics-"


def metrics_dir(env: Mapping[str, str], instance: int | None = None) -> str:
    """The directory where one worker instance's processes write their metrics.

    One per instance (metrics port and master pid): a second worker on the host must not
    wipe the first one's files. ``PROMETHEUS_MULTIPROC_DIR`` overrides it.
    """
    port = env.get("TAGSYNC_METRICS_PORT") or "9191"
    instance = os.getpid() if instance is None else instance
    return env.get("PROMETHEUS_MULTIPROC_DIR") or os.path.join(
        tempfile.gettempdir(), f"{METRICS_DIR_PREFIX}{port}-{instance}"
    )


def _remove_stale_metrics_dirs() -> None:
    """Remove the metrics directories of worker instances that are gone (pid not running)."""
    for path in glob.glob(os.path.join(tempfile.gettempdir(), f"{METRICS_DIR_PREFIX}*-*")):
        pid = path.rpartition("-")[2]
        if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
            shutil.rmtree(path, ignore_errors=True)


def dramatiq_env(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` plus what dramatiq and prometheus-client read at import time.

    The instance's metrics directory is made empty here, before any process starts: files
    left by an earlier run would be summed into this run's counters.
    """
    _remove_stale_metrics_dirs()
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


class WorkerGroup:
    """A ``dramatiq worker.actors`` process group (tests, benchmarks), logging to a file."""

    def __init__(self, env: dict[str, str], *, processes: int = 2, threads: int = 4) -> None:
        self.env = env
        self.processes = processes
        # Closed (and removed) by stop(); the worker writes to it meanwhile.
        self.log = tempfile.NamedTemporaryFile(prefix="tagsync-", suffix=".log", delete=False)  # noqa: SIM115
        self.process = subprocess.Popen(
            dramatiq_command(processes=processes, threads=threads),
            env=dramatiq_env(env),
            stdout=self.log,
            stderr=self.log,
            start_new_session=True,
        )

    def logs(self) -> str:
        """Everything the group logged so far."""
        with open(self.log.name, encoding="utf-8", errors="replace") as log:
            return log.read()

    def wait_ready(self, timeout_s: float = 30) -> WorkerGroup:
        """Wait until every worker process says it is ready."""
        deadline = time.monotonic() + timeout_s
        while self.logs().count("ready for action") < self.processes:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"worker did not start:\n{self.logs()[-3000:]}")
            time.sleep(0.1)
        return self

    def children(self) -> list[int]:
        """The pids of the worker processes (children of the dramatiq master)."""
        path = f"/proc/{self.process.pid}/task/{self.process.pid}/children"
        with open(path) as children:
            return [int(pid) for pid in children.read().split()]

    def rss_bytes(self) -> int:
        """Resident memory of the worker processes together."""
        total = 0
        for pid in self.children():
            with open(f"/proc/{pid}/status") as status:
                for line in status:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
        return total

    def kill(self) -> None:
        """kill -9 the whole process group at once."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        """SIGTERM the group (SIGKILL if it lingers) and remove the log."""
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
            except ProcessLookupError:
                pass
        self.log.close()
        if os.path.exists(self.log.name):  # stop() may be called twice (a test, then its fixture)
            os.unlink(self.log.name)
