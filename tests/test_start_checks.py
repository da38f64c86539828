"""Every misconfiguration is caught at start, in one line, before anything runs."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import redis
import requests

from tests.helpers import SECRET, tagsync, wait_until
from worker.runtime.launch import metrics_dir
from worker.runtime.processes import free_port, stop_process
from worker.wechat.client import WeChatClient

ROOT = Path(__file__).resolve().parent.parent


def one_line_refusal(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    """Exit 2, no traceback, and a last line naming each of ``needles``."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    for needle in needles:
        assert needle in last, last


@pytest.mark.parametrize("rate", ["nan", "inf", "-inf", "0", "-1", "1e999"])
def test_a_rate_that_is_not_a_positive_finite_number_is_refused(
    env: dict[str, str], rate: str
) -> None:
    """TAGSYNC_RATE=nan/inf/0/negative stops the worker at start with the variable named."""
    # When
    result = tagsync({**env, "TAGSYNC_RATE": rate}, "worker", "--processes", "1")
    # Then
    one_line_refusal(result, "TAGSYNC_RATE")


@pytest.mark.parametrize("rate", ["nan", "inf", "0"])
def test_an_accounts_file_rate_that_is_not_finite_is_refused(
    env: dict[str, str], tmp_path: Path, rate: str
) -> None:
    """`rate = inf` (TOML has nan and inf) in the accounts file names the file, line and key."""
    # Given
    accounts = tmp_path / "accounts.toml"
    accounts.write_text(f'[[accounts]]\nappid = "wxrate0001"\nsecret = "env:S"\nrate = {rate}\n')
    # When
    result = tagsync(
        {**env, "TAGSYNC_ACCOUNTS": str(accounts), "S": "s"}, "worker", "--processes", "1"
    )
    # Then
    one_line_refusal(result, f"{accounts}:4", "rate", "finite")


@pytest.mark.parametrize("base", ["api.weixin.qq.com", "ftp://api.weixin.qq.com", "http://"])
def test_an_api_base_that_is_not_an_http_url_is_refused(env: dict[str, str], base: str) -> None:
    """WECHAT_API_BASE without http(s):// and a host is one line, not a bare InvalidSchema."""
    # When
    result = tagsync({**env, "WECHAT_API_BASE": base}, "worker", "--processes", "1")
    # Then
    one_line_refusal(result, "WECHAT_API_BASE", "http://")


def test_a_cached_token_does_not_hide_a_wrong_secret(
    env: dict[str, str], client: WeChatClient
) -> None:
    """With a valid token cached in Redis, a wrong WECHAT_SECRET still stops the start."""
    # Given: the account's token is in Redis, as a running deployment has it
    client.tokens.token()
    # When
    result = tagsync({**env, "WECHAT_SECRET": "not-the-secret"}, "worker", "--processes", "1")
    # Then
    one_line_refusal(result, "WeChat refuses the credentials")


def test_a_cached_token_does_not_hide_an_unreachable_api_base(
    env: dict[str, str], client: WeChatClient
) -> None:
    """With a valid token cached in Redis, a WECHAT_API_BASE nobody answers stops the start."""
    # Given
    client.tokens.token()
    nobody = f"http://127.0.0.1:{free_port()}"
    # When
    result = tagsync({**env, "WECHAT_API_BASE": nobody}, "worker", "--processes", "1")
    # Then
    one_line_refusal(result, "WeChat cannot be reached", "WECHAT_API_BASE")
    assert SECRET not in result.stderr


def test_an_accounts_file_with_a_literal_secret_logs_valid_json(
    env: dict[str, str], tmp_path: Path
) -> None:
    """The literal-secret warning is a JSON line like every other, without the secret."""
    # Given
    literal = "literal-secret-" + "x" * 20
    accounts = tmp_path / "accounts.toml"
    accounts.write_text(f'[[accounts]]\nappid = "wxliteral01"\nsecret = "{literal}"\n')
    dead_redis = f"redis://127.0.0.1:{free_port()}/0"
    # When: the start goes as far as Redis, which is not there
    result = tagsync(
        {**env, "TAGSYNC_ACCOUNTS": str(accounts), "TAGSYNC_REDIS_URL": dead_redis},
        "worker",
        "--processes",
        "1",
    )
    # Then
    assert result.returncode == 2
    events = [json.loads(line) for line in result.stderr.splitlines()]
    warning = next(e for e in events if e["event"] == "accounts.literal_secret")
    assert warning["line"] == 3 and "env:NAME" in warning["hint"]
    assert literal not in result.stderr


def test_a_second_worker_on_the_metrics_port_is_refused_and_the_first_keeps_serving(
    env: dict[str, str],
) -> None:
    """A second `tagsync worker` with the same TAGSYNC_METRICS_PORT exits 2 naming it, and
    the first one's metrics (its counters, its directory) are untouched."""
    # Given: a worker serving its metrics
    port = free_port()
    worker_env = {**env, "TAGSYNC_METRICS_PORT": str(port), "TAGSYNC_METRICS_HOST": "127.0.0.1"}
    first = subprocess.Popen(
        [sys.executable, "-m", "worker", "worker", "--processes", "1", "--threads", "2"],
        env=worker_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        url = f"http://127.0.0.1:{port}/metrics"

        def serving() -> bool:
            try:
                return "tagsync_dead_letters" in requests.get(url, timeout=1).text
            except requests.RequestException:
                return False

        wait_until(serving, timeout_s=30, what="the first worker's metrics")
        directory = Path(metrics_dir(worker_env, instance=first.pid))
        files_before = sorted(p.name for p in directory.iterdir())
        # When
        second = tagsync(worker_env, "worker", "--processes", "1")
        # Then
        one_line_refusal(second, f"TAGSYNC_METRICS_PORT={port}", "another tagsync worker")
        assert serving()
        assert sorted(p.name for p in directory.iterdir()) == files_before
    finally:
        stop_process(first, timeout_s=30)


def test_the_procfile_redis_on_a_taken_port_says_so_in_one_line(tmp_path: Path) -> None:
    """The Procfile's `redis` line on a port in use exits 2 with one line naming the port."""
    # Given: a port somebody listens on, and the Procfile's redis command
    line = next(
        text.split(":", 1)[1]
        for text in (ROOT / "Procfile").read_text().splitlines()
        if text.startswith("redis:")
    )
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        # When
        result = subprocess.run(
            ["/bin/sh", "-c", line.strip()],
            env={
                "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
                "REDIS_PORT": str(port),
                "REDIS_DIR": str(tmp_path / "redis"),
            },
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    # Then
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        f"tagsync redis: cannot start redis-server: --port={port} is taken on 127.0.0.1 "
        "(Address already in use)"
    ]


def test_the_procfile_redis_keeps_its_data_across_a_restart(tmp_path: Path) -> None:
    """The dev Redis of the Procfile writes an append-only file: a key survives a restart."""
    # Given
    line = next(
        text.split(":", 1)[1]
        for text in (ROOT / "Procfile").read_text().splitlines()
        if text.startswith("redis:")
    )
    port = free_port()
    run_env = {
        "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
        "REDIS_PORT": str(port),
        "REDIS_DIR": str(tmp_path / "redis"),
    }

    def start() -> subprocess.Popen[str]:
        process = subprocess.Popen(
            ["/bin/sh", "-c", f"exec {line.strip()}"],
            env=run_env,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert process.stdout is not None
        assert "listening" in process.stdout.readline()
        return process

    server = start()
    client = redis.Redis(port=port)
    client.set("dev:kept", "yes")
    # When: stopped as a process manager stops it (SIGTERM: Redis flushes its AOF)
    stop_process(server)
    server = start()
    try:
        # Then
        assert client.get("dev:kept") == b"yes"
        assert (tmp_path / "redis" / "appendonlydir").is_dir() or any(
            p.suffix == ".aof" for p in (tmp_path / "redis").iterdir()
        )
    finally:
        client.close()
        stop_process(server)
