"""The local stack of the README's first screen: `make dev` (`tagsync dev`)."""

from __future__ import annotations

import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import requests

from tests.helpers import tagsync
from worker.cli.dev import read_env_file
from worker.runtime.processes import free_port

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


class DevStack:
    """`tagsync dev` run from the repository's top with an env file of free ports."""

    def __init__(self, env_file: Path, env: dict[str, str]) -> None:
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        self.process = subprocess.Popen(
            [sys.executable, "-m", "worker", "dev", "--env-file", str(env_file)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))

    def wait_for(self, pattern: str, timeout_s: float = 120) -> str:
        """The first line (from now) matching ``pattern``."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                line = self.lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(
                    f"no line matching {pattern!r}:\n" + "\n".join(self.seen[-40:])
                ) from None
            self.seen.append(line)
            if re.search(pattern, line):
                return line

    def interrupt(self) -> int:
        """Ctrl-C (SIGINT to the stack alone); its exit status once it has stopped."""
        self.process.send_signal(signal.SIGINT)
        code = self.process.wait(timeout=60)
        while not self.lines.empty():
            self.seen.append(self.lines.get())
        return code

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


@pytest.fixture
def dev_env(tmp_path: Path) -> tuple[Path, dict[str, str], dict[str, int]]:
    """dev.env with every port free and the Redis data in a temporary directory."""
    ports = {
        name: free_port()
        for name in ("REDIS_PORT", "FAKEWECHAT_PORT", "PORT", "TAGSYNC_METRICS_PORT")
    }
    settings = {
        **read_env_file(ROOT / "dev.env"),
        **{name: str(port) for name, port in ports.items()},
        "TAGSYNC_REDIS_URL": f"redis://127.0.0.1:{ports['REDIS_PORT']}/0",
        "WECHAT_API_BASE": f"http://127.0.0.1:{ports['FAKEWECHAT_PORT']}",
        "REDIS_DIR": str(tmp_path / "redis"),
    }
    text = "".join(f"{name}={value}\n" for name, value in settings.items())
    env_file = tmp_path / "dev.env"
    env_file.write_text(text, encoding="utf-8")
    # The shell's own settings lose to the file's (a deployment's variables exported, say).
    env = {**os.environ, "TAGSYNC_REDIS_URL": "redis://127.0.0.1:1/0", "PORT": "1"}
    return env_file, env, ports


@pytest.fixture
def stacks() -> Iterator[list[DevStack]]:
    started: list[DevStack] = []
    yield started
    for stack in started:
        stack.kill()


@pytest.mark.long  # over 10 s: make test-long (CI runs it) keeps make test under 10 min
def test_the_dev_stack_takes_the_readme_curl_and_stops_cleanly(
    dev_env: tuple[Path, dict[str, str], dict[str, int]], stacks: list[DevStack]
) -> None:
    """`tagsync dev` comes up with the tags the README's curl uses; the intent it sends is
    applied; Ctrl-C lets the worker stop by itself; the Redis data is there after a restart."""
    env_file, env, ports = dev_env
    # Given: the stack, up
    stack = DevStack(env_file, env)
    stacks.append(stack)
    curl = stack.wait_for(r"curl -s -X POST")
    stack.wait_for(r"\| ready")
    # When: the README's intent, sent as its curl line sends it
    openid = re.search(r'"openid":"([^"]+)"', curl)
    assert openid is not None, curl
    settings = read_env_file(env_file)
    answer = requests.post(
        f"http://127.0.0.1:{ports['PORT']}/v1/intents",
        headers={"Authorization": f"Bearer {settings['TAGSYNC_INGEST_TOKEN']}"},
        json={"intents": [{"op": "tag", "tag": "VIP", "openid": openid[1]}]},
        timeout=10,
    )
    # Then: accepted and applied to the tag the stack created
    assert answer.status_code == 202 and answer.json() == {"accepted": 1}
    user_env = {**os.environ, **settings}  # `set -a; . ./dev.env; set +a`
    deadline = time.monotonic() + 30
    while "VIP" not in (shown := tagsync(user_env, "user-tags", openid[1])).stdout:
        assert time.monotonic() < deadline, shown.stdout + shown.stderr
        time.sleep(0.5)
    dev_redis = redis.Redis(port=ports["REDIS_PORT"])
    dev_redis.set("dev:kept", "yes")
    # When: Ctrl-C
    code = stack.interrupt()
    # Then: every process stopped in order, the worker by itself (not killed)
    output = "\n".join(stack.seen)
    assert code == 130, output[-3000:]
    stopping = re.findall(r"stopping (\w+)", output)
    assert stopping.index("worker") < stopping.index("redis"), stopping
    assert "worker.stopped" in output and "Traceback" not in output
    for port in ports.values():
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
    # And: the dev Redis kept its data across a restart
    again = DevStack(env_file, env)
    stacks.append(again)
    again.wait_for(r"\| ready")
    assert dev_redis.get("dev:kept") == b"yes"
    dev_redis.close()
    assert again.interrupt() == 130
