"""Helpers the tests share: the simulator as tests see it, waiting on predicates, running
``tagsync`` as an operator would, and the expected state of a stream of intents. The
fixtures that start real processes are in ``conftest.py``."""

from __future__ import annotations

import secrets
import subprocess
import sys
import tempfile
import time
from typing import Any

import redis
import requests

import producers
from worker.wechat.client import WeChatClient

#: The AppID the test simulator serves.
APPID = "wxtest0000tagsync"


#: A fresh secret per run, so redaction tests can look for it anywhere.
SECRET = "test-secret-" + secrets.token_hex(12)


#: Fans the test simulator starts with.
FANS = 2000


#: The bearer token of the ingest server the ``ingest_url`` fixture starts.
INGEST_TOKEN = "s3cret-ingest-token"


class Sim:
    """The simulator process as tests see it: its URL and its ``/_sim/*`` endpoints."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.http = requests.Session()

    def get(self, path: str, **params: Any) -> Any:
        response = self.http.get(f"{self.url}{path}", params=params, timeout=30)
        response.raise_for_status()
        return response.json()

    def post(self, path: str, body: Any = None) -> Any:
        response = self.http.post(f"{self.url}{path}", json=body or {}, timeout=30)
        response.raise_for_status()
        return response.json()

    def stats(self) -> dict[str, Any]:
        return dict(self.get("/_sim/stats"))

    def state(self) -> dict[str, Any]:
        return dict(self.get("/_sim/state"))

    def log(self) -> list[dict[str, Any]]:
        """The latest batch calls: op, tagid, openids, errcode, at (``/_sim/log``)."""
        return list(self.get("/_sim/log")["batches"])

    def config(self, **changes: Any) -> dict[str, Any]:
        return dict(self.post("/_sim/config", changes))

    def fans(self, count: int, offset: int = 0) -> list[str]:
        return list(self.get("/_sim/fans", offset=offset, limit=count)["openids"])

    def foreign(self, count: int) -> list[str]:
        return list(self.post("/_sim/fans", {"count": count, "foreign": True})["openids"])

    def token(self) -> str:
        """A token fetched directly (counts as a fetch in the stats)."""
        body = {"grant_type": "client_credential", "appid": APPID, "secret": SECRET}
        response = self.http.post(f"{self.url}/cgi-bin/stable_token", json=body, timeout=10)
        return str(response.json()["access_token"])

    def api(self, path: str, body: Any = None, *, token: str | None = None) -> dict[str, Any]:
        """A raw API call, bypassing the client's own checks."""
        params = {"access_token": token if token is not None else self.token()}
        response = self.http.post(
            f"{self.url}/cgi-bin/{path}", params=params, json=body, timeout=10
        )
        return dict(response.json())


def start_simulator(*extra: str) -> tuple[subprocess.Popen[str], str]:
    """Start ``fakewechat`` on a free port; return the process and its URL."""
    # stderr goes to a file: an unread pipe would block the simulator once it fills.
    errors = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 (closed below; the child keeps its copy)
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fakewechat",
            "--port",
            "0",
            "--appid",
            APPID,
            "--secret",
            SECRET,
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=errors,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    if "listening on" not in line:
        process.kill()
        process.wait()
        errors.seek(0)
        raise RuntimeError(f"fakewechat did not start: {line}{errors.read()}")
    errors.close()
    return process, line.split("listening on ")[1].split()[0]


def backlog(connection: redis.Redis, queue: redis.Redis | None = None) -> int:
    """Intents not yet settled: pending, in flight, or in queue messages not yet ingested
    (``queue``: the queue's Redis, when the state lives on another).

    Flush messages are not counted: a delayed one (a paused account looks again every
    few seconds) may wait after its tag has nothing left to do.
    """
    from worker.pending import PendingStore
    from worker.queues import unsettled_messages

    statuses = PendingStore(connection).status()
    waiting = sum(t.unsettled for t in statuses)
    return waiting + unsettled_messages(queue or connection)


def wait_drained(
    connection: redis.Redis, timeout_s: float = 60, queue: redis.Redis | None = None
) -> None:
    """Wait until the backlog is empty twice in a row (a flush may be between two looks)."""
    deadline = time.monotonic() + timeout_s
    quiet = 0
    while quiet < 2:
        if time.monotonic() > deadline:
            raise AssertionError(
                f"backlog did not drain in {timeout_s}s: {backlog(connection, queue)} left"
            )
        quiet = quiet + 1 if backlog(connection, queue) == 0 else 0
        time.sleep(0.2)


def ensure_fans(sim: Sim, count: int) -> list[str]:
    """The first ``count`` fans of the simulator, adding fans if it has fewer."""
    total = sim.get("/_sim/fans", limit=0)["total"]
    if total < count:
        sim.post("/_sim/fans", {"count": count - total})
    return sim.fans(count)


def wait_until(
    condition: Any, timeout_s: float = 30, what: str = "condition", poll_s: float = 0.05
) -> None:
    """Wait until ``condition()`` is true (polling), or fail naming ``what``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout_s}s waiting for {what}"
        time.sleep(poll_s)


def tagsync(
    env: dict[str, str], *args: str, timeout: float = 60, input_text: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a ``tagsync`` command as an operator would; its output and exit status."""
    return subprocess.run(
        [sys.executable, "-m", "worker", *args],
        env=env,
        input=input_text,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def batch_calls(sim: Sim) -> int:
    """Batch (un)tagging calls the simulator received."""
    calls = sim.stats()["calls"]
    return int(
        calls.get("tags/members/batchtagging", 0) + calls.get("tags/members/batchuntagging", 0)
    )


def make_tags(client: WeChatClient, count: int, prefix: str = "t") -> list[int]:
    """Create ``count`` tags; their ids."""
    return [client.create_tag(f"{prefix}{i}").id for i in range(count)]


def queued_backlog(
    sim: Sim, client: WeChatClient, *, tags: int, fans: int, prefix: str
) -> tuple[list[int], list[str]]:
    """``tags`` new tags, each with a tag intent for the first ``fans`` fans, queued before
    any worker runs: (tag ids, openids)."""
    made = make_tags(client, tags, prefix)
    openids = ensure_fans(sim, fans)
    for tag in made:
        producers.tag(tag, openids, account=APPID)
    return made, openids


def limit_rate_from_next_second(sim: Sim, rate: int) -> None:
    """Limit the simulator to ``rate`` calls/s from the next second on: the calls made so
    far (tags created, say) fall in an earlier second than the workers' calls."""
    time.sleep(1.1 - time.time() % 1)
    sim.config(rate_per_sec=rate)


def expected_state(
    events: list[tuple[int, str, str, float]], start: dict[int, set[str]]
) -> dict[int, set[str]]:
    """Last write wins by ts over ``start``."""
    latest: dict[tuple[int, str], tuple[float, str]] = {}
    for tag_id, openid, op, ts in events:
        if (tag_id, openid) not in latest or ts >= latest[(tag_id, openid)][0]:
            latest[(tag_id, openid)] = (ts, op)
    state = {tag_id: set(fans) for tag_id, fans in start.items()}
    for (tag_id, openid), (_, op) in latest.items():
        members = state.setdefault(tag_id, set())
        (members.add if op == "tag" else members.discard)(openid)
    return state


def fans_of(sim: Sim, tag_id: int) -> set[str]:
    """The fans the simulator has on a tag."""
    return set(sim.state()["tags"].get(str(tag_id), {}).get("fans", []))
