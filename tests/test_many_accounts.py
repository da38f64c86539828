"""Many accounts in one deployment, end to end: real worker processes, a simulator with
several apps and an Open Platform component, each account at its own quota."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import requests

import producers
from producers.redis_url import connect
from tests.helpers import (
    APPID,
    SECRET,
    start_simulator,
    tagsync,
    wait_drained,
    wait_until,
)
from worker.pending import PendingStore
from worker.runtime.processes import stop_process
from worker.runtime.redis_server import LocalCluster

B, C, D = "wxtestbbbbtagsync", "wxtestcccctagsync", "wxtestddddtagsync"
COMPONENT = "wxtestcomponent01"
SECRETS = {B: "secret-b-" + SECRET[-8:], C: "secret-c-" + SECRET[-8:], D: "secret-d-" + SECRET[-8:]}
COMPONENT_SECRET = "component-" + SECRET[-12:]
FANS = 300


class PlatformSim:
    """The multi-app simulator: ``/_sim/*`` of one app by ``appid``."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.http = requests.Session()

    def get(self, path: str, appid: str = APPID, **params: Any) -> Any:
        response = self.http.get(f"{self.url}{path}", params={"appid": appid, **params}, timeout=30)
        response.raise_for_status()
        return response.json()

    def post(self, path: str, body: dict[str, Any] | None = None, appid: str = APPID) -> Any:
        body = body or {}
        params = {} if "appid" in body else {"appid": appid}
        response = self.http.post(f"{self.url}{path}", params=params, json=body, timeout=30)
        response.raise_for_status()
        return response.json()

    def fans(self, appid: str, count: int = FANS) -> list[str]:
        return list(self.get("/_sim/fans", appid, limit=count)["openids"])

    def fans_of(self, appid: str, tag_id: int) -> set[str]:
        tags = self.get("/_sim/state", appid)["tags"]
        return set(tags.get(str(tag_id), {}).get("fans", []))

    def calls(self, appid: str, path: str) -> int:
        return int(self.get("/_sim/stats", appid)["calls"].get(path, 0))


@pytest.fixture(scope="module")
def platform_process() -> Iterator[str]:
    """One simulator with four apps and a component, for this module."""
    apps = [arg for appid in (B, C, D) for arg in ("--app", f"{appid}:{SECRETS[appid]}")]
    process, url = start_simulator(
        "--fans", str(FANS), *apps, "--component", f"{COMPONENT}:{COMPONENT_SECRET}"
    )
    yield url
    stop_process(process)


@pytest.fixture
def platform(platform_process: str) -> Iterator[PlatformSim]:
    """The platform simulator, every app and the component reset."""
    sim = PlatformSim(platform_process)
    sim.post("/_sim/reset", appid="*")
    yield sim
    overlapping = sim.get("/_sim/stats", "*")["overlapping_batches"]
    sim.http.close()
    assert overlapping == 0


@pytest.fixture
def accounts_env(tmp_path: Path, platform: PlatformSim, redis_url: str) -> Iterator[dict[str, str]]:
    """An accounts file with A, B and C (own secrets) and the component; its environment."""
    path = tmp_path / "accounts.toml"
    lines = ["[defaults]", "rate = 5", ""]
    for number, appid in enumerate((APPID, B, C)):
        lines += ["[[accounts]]", f'appid = "{appid}"', f'secret = "env:SECRET_{number}"', ""]
    lines += ["[component]", f'appid = "{COMPONENT}"', 'secret = "env:COMPONENT_SECRET"']
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TAGSYNC_", "WECHAT_"))} | {
        "TAGSYNC_ACCOUNTS": str(path),
        "SECRET_0": SECRET,
        "SECRET_1": SECRETS[B],
        "SECRET_2": SECRETS[C],
        "COMPONENT_SECRET": COMPONENT_SECRET,
        "WECHAT_API_BASE": platform.url,
        "TAGSYNC_REDIS_URL": redis_url,
        "TAGSYNC_LOG_FORMAT": "json",
        "TAGSYNC_LINGER_MS": "100",
        "TAGSYNC_BACKOFF_MIN_MS": "50",
        "TAGSYNC_BACKOFF_MAX_MS": "500",
        "TAGSYNC_WECHAT_TIMEOUT_S": "2",
    }
    producers.configure(redis_url=redis_url)
    yield env
    producers.configure(None)


def run(env: dict[str, str], *args: str) -> str:
    done = tagsync(env, *args)
    assert done.returncode == 0, f"tagsync {' '.join(args)}: {done.stderr}"
    return done.stdout


def create_tag(env: dict[str, str], appid: str, name: str) -> int:
    out = run(env, "tags", "create", name, "--account", appid)
    return int(out.split()[2])


def authorize_d(env: dict[str, str], platform: PlatformSim) -> str:
    """Hand over a ticket, authorize D at the simulator and in tagsync; its refresh token."""
    ticket = platform.get("/_sim/ticket")["component_verify_ticket"]
    run(env, "component", "ticket", ticket)
    refresh = platform.post("/_sim/authorize", {"appid": D})["authorizer_refresh_token"]
    run(env, "accounts", "authorize", D, "--refresh-token", refresh)
    return str(refresh)


def all_tagged(platform: PlatformSim, appid: str, tags: list[int]) -> bool:
    """Does every fan of ``appid`` carry each of ``tags`` at the simulator?"""
    fans = set(platform.fans(appid))
    return all(platform.fans_of(appid, tag_id) == fans for tag_id in tags)


def tags_of_each(env: dict[str, str], prefix: str, count: int) -> dict[str, list[int]]:
    """``count`` new tags in each of the accounts A, B and C."""
    return {
        appid: [create_tag(env, appid, f"{prefix}{i}") for i in range(count)]
        for appid in (APPID, B, C)
    }


def tag_all_fans(platform: PlatformSim, tags: dict[str, list[int]]) -> None:
    """Enqueue: every fan of each account gets each of its ``tags``."""
    for appid, ids in tags.items():
        for tag_id in ids:
            producers.tag(tag_id, platform.fans(appid), account=appid)


def pending_of(connection: redis.Redis, appid: str) -> int:
    return sum(t.unsettled for t in PendingStore(connection).status() if t.account == appid)


def test_each_account_keeps_its_own_rate(
    accounts_env: dict[str, str],
    platform: PlatformSim,
    start_worker: Any,
    redis_client: redis.Redis,
) -> None:
    """Three accounts at 5 calls/s each, all at once: every fan tagged, no 45011 anywhere."""
    # Given: WeChat allows each app 5 calls a second; the file says rate = 5
    tags = tags_of_each(accounts_env, "r", 3)
    for appid in tags:
        platform.post("/_sim/config", {"rate_per_sec": 5}, appid=appid)
    # When
    tag_all_fans(platform, tags)
    start_worker(processes=2, threads=4, **accounts_env)
    wait_drained(redis_client, timeout_s=90)
    # Then
    for appid, ids in tags.items():
        stats = platform.get("/_sim/stats", appid)
        assert "45011" not in stats["errcodes"], (appid, stats["errcodes"])
        assert stats["max_calls_in_any_second"] <= 5
        for tag_id in ids:
            assert platform.fans_of(appid, tag_id) == set(platform.fans(appid))


@pytest.mark.long
def test_each_account_keeps_its_own_rate_with_the_state_on_a_cluster(
    accounts_env: dict[str, str],
    platform: PlatformSim,
    start_worker: Any,
    cluster: LocalCluster,
    redis_client: redis.Redis,
) -> None:
    """The same with the state on three primaries (the queue on plain Redis): each
    account's gate, tokens and tags live in their own slots, and still no 45011."""
    # Given
    env = {**accounts_env, "TAGSYNC_REDIS_URL": cluster.url,
           "TAGSYNC_QUEUE_URL": accounts_env["TAGSYNC_REDIS_URL"]}  # fmt: skip
    tags = tags_of_each(env, "c", 2)
    for appid in tags:
        platform.post("/_sim/config", {"rate_per_sec": 5}, appid=appid)
    # When
    tag_all_fans(platform, tags)
    start_worker(processes=2, threads=4, **env)
    state = connect(cluster.url)
    wait_drained(state, timeout_s=90, queue=redis_client)
    # Then
    for appid, ids in tags.items():
        stats = platform.get("/_sim/stats", appid)
        assert "45011" not in stats["errcodes"], (appid, stats["errcodes"])
        assert stats["max_calls_in_any_second"] <= 5
        for tag_id in ids:
            assert platform.fans_of(appid, tag_id) == set(platform.fans(appid))
    served = json.loads(run(env, "status", "--json"))["accounts"]
    assert set(served) == set(tags)
    for appid, row in served.items():  # every call counted by the account's gate, in its slot
        assert row["budget"]["used_today"] >= platform.calls(appid, "tags/members/batchtagging") > 0
    state.close()


def test_a_paused_account_does_not_slow_the_others(
    accounts_env: dict[str, str],
    platform: PlatformSim,
    start_worker: Any,
    redis_client: redis.Redis,
) -> None:
    """A's tagging quota runs out (45009): A waits, B and C finish as fast as their rate."""
    # Given: A may tag 2 batches today; B and C 12 batches each at 5/s (about 2.4 s)
    tags = tags_of_each(accounts_env, "q", 2)
    platform.post("/_sim/config", {"daily_quota": 2}, appid=APPID)
    # When
    tag_all_fans(platform, tags)
    start_worker(processes=2, threads=4, **accounts_env)
    started = time.monotonic()
    wait_until(
        lambda: all_tagged(platform, B, tags[B]) and all_tagged(platform, C, tags[C]),
        timeout_s=60,
        what="B and C to finish",
    )
    took = time.monotonic() - started
    # Then: 12 calls at 5/s take 2.4 s; noise (ingest, linger, tokens) stays well under 3 s more
    assert took < 2.4 + 3.0, f"B and C took {took:.1f}s while A was paused"
    status = json.loads(run(accounts_env, "status", "--json", "--account", APPID))
    pause = status["accounts"][APPID]["pauses"]["tags/members/batchtagging"]
    assert pause["errcode"] == "45009"
    assert pending_of(redis_client, APPID) > 0  # kept, not dead-lettered
    assert (
        json.loads(run(accounts_env, "status", "--json", "--account", B))["accounts"][B]["pauses"]
        == {}
    )


def test_an_authorization_revoked_mid_run_pauses_and_resumes(
    accounts_env: dict[str, str],
    platform: PlatformSim,
    start_worker: Any,
    redis_client: redis.Redis,
) -> None:
    """D is authorized through the component; revoked mid-run it pauses (61023) and keeps
    its intents while B goes on; authorized again, it finishes."""
    # Given
    authorize_d(accounts_env, platform)
    d_tag = create_tag(accounts_env, D, "via-component")
    b_tag = create_tag(accounts_env, B, "own-secret")
    d_fans, b_fans = platform.fans(D), platform.fans(B)
    start_worker(processes=2, threads=4, **accounts_env)
    producers.tag(d_tag, d_fans[:100], account=D)
    wait_until(lambda: len(platform.fans_of(D, d_tag)) == 100, what="D's first fans")
    # When: the merchant revokes the authorization; more intents come for D and B
    platform.post("/_sim/unauthorize", {"appid": D})
    producers.tag(d_tag, d_fans[100:], account=D)
    producers.tag(b_tag, b_fans, account=B)

    # Then: D pauses for its authorization, B finishes meanwhile
    def d_paused() -> bool:
        state = json.loads(run(accounts_env, "status", "--json", "--account", D))
        pause = state["accounts"][D]["paused"]
        return pause is not None and pause["reason"] == "authorization"

    wait_until(d_paused, timeout_s=30, what="D paused for its authorization")
    wait_until(lambda: platform.fans_of(B, b_tag) == set(b_fans), timeout_s=30, what="B done")
    assert pending_of(redis_client, D) == len(d_fans) - 100
    # When: authorized again
    refresh = platform.post("/_sim/authorize", {"appid": D})["authorizer_refresh_token"]
    run(accounts_env, "accounts", "authorize", D, "--refresh-token", refresh)
    # Then
    wait_drained(redis_client, timeout_s=60)
    assert platform.fans_of(D, d_tag) == set(d_fans)
    assert run(accounts_env, "dlq", "list").count("\n") == 1  # the header only


def test_a_revoked_accounts_intents_can_be_purged(
    accounts_env: dict[str, str],
    platform: PlatformSim,
    start_worker: Any,
    redis_client: redis.Redis,
) -> None:
    """`accounts purge` dead-letters a revoked account's kept intents (account_purged),
    listed by `dlq list --account`; B's are untouched."""
    # Given: D revoked and paused with 300 intents kept; B's intents dead-lettered never
    authorize_d(accounts_env, platform)
    d_tag = create_tag(accounts_env, D, "to-purge")
    platform.post("/_sim/unauthorize", {"appid": D})
    start_worker(processes=1, threads=4, **accounts_env)
    producers.tag(d_tag, platform.fans(D), account=D)

    def d_paused() -> bool:
        state = json.loads(run(accounts_env, "status", "--json", "--account", D))
        return state["accounts"][D]["paused"] is not None

    wait_until(d_paused, timeout_s=30, what="D paused")
    # When
    out = run(accounts_env, "accounts", "purge", D)
    # Then
    assert out.startswith(f"{FANS} pending intents of {D} dead-lettered")
    assert pending_of(redis_client, D) == 0
    listed = run(accounts_env, "dlq", "list", "--account", D, "--limit", "1000")
    assert listed.count("account_purged") == FANS
    assert run(accounts_env, "dlq", "list", "--account", B).count("\n") == 1


@pytest.mark.long  # about 18 s: make test-long
def test_a_rotated_refresh_token_survives_a_kill_9(
    accounts_env: dict[str, str],
    platform: PlatformSim,
    start_worker: Any,
    redis_client: redis.Redis,
) -> None:
    """WeChat rotates D's refresh token on every refresh; a worker killed while the answer
    is on its way (rotated at WeChat, not yet stored) loses nothing: the next one goes on."""
    # Given: rotation on, the replaced token honoured for 20 s, D's answers take 1.5 s
    first = authorize_d(accounts_env, platform)
    d_tag = create_tag(accounts_env, D, "rotating")
    platform.post(
        "/_sim/config",
        {"rotate_refresh_token": True, "refresh_token_grace_s": 20, "latency_ms": [1500, 1500]},
        appid=D,
    )
    redis_client.delete(f"tagsync:{{{D}}}:token")  # the next call fetches (and rotates)
    before = platform.calls(D, "component/api_authorizer_token")
    fans = platform.fans(D)
    producers.tag(d_tag, fans, account=D)
    worker = start_worker(processes=1, threads=4, **accounts_env)
    # When: the refresh is at WeChat (counted there, answer 1.5 s away): kill -9
    wait_until(
        lambda: platform.calls(D, "component/api_authorizer_token") > before,
        timeout_s=30,
        poll_s=0.02,
        what="the worker's refresh to reach WeChat",
    )
    for pid in worker.children():
        os.kill(pid, signal.SIGKILL)
    worker.stop()
    # The worst moment indeed: WeChat replaced the token, tagsync still holds the old one.
    authorization = f"tagsync:{{{D}}}:authorization"
    assert redis_client.hget(authorization, "refresh_token") == first.encode()
    platform.post("/_sim/config", {"latency_ms": [0, 0]}, appid=D)
    # Then: a new worker refreshes with the stored (replaced, still honoured) token, stores
    # the new one, and every fan is tagged
    start_worker(processes=1, threads=4, **accounts_env)
    wait_drained(redis_client, timeout_s=60)
    assert platform.fans_of(D, d_tag) == set(fans)
    assert redis_client.hget(authorization, "refresh_token") not in (None, first.encode())
    # The stored token is the newest WeChat gave: a fresh refresh with it works after the
    # replaced ones expired.
    platform.post("/_sim/config", {"refresh_token_grace_s": 0}, appid=D)
    redis_client.delete(f"tagsync:{{{D}}}:token")
    assert run(accounts_env, "tags", "list", "--account", D)


def test_an_account_added_while_workers_run_is_served(
    accounts_env: dict[str, str],
    platform: PlatformSim,
    start_worker: Any,
    redis_client: redis.Redis,
) -> None:
    """Authorized over HTTP while workers run, D's intents are applied without a restart."""
    # Given: workers running; D is not served yet
    start_worker(processes=2, threads=4, **accounts_env)
    ticket = platform.get("/_sim/ticket")["component_verify_ticket"]
    refresh = platform.post("/_sim/authorize", {"appid": D})["authorizer_refresh_token"]
    from worker.http import DeploymentApp

    # When: the platform's backend hands ticket and authorization to the ingest server
    app = DeploymentApp(token="t0k3n")
    for path, body in (
        ("/v1/component/ticket", {"ticket": ticket}),
        ("/v1/accounts", {"appid": D, "refresh_token": refresh}),
    ):
        status = wsgi_post(app, path, body, accounts_env)
        assert status.startswith(("200", "201")), status
    d_tag = create_tag(accounts_env, D, "added-live")
    producers.tag(d_tag, platform.fans(D), account=D)
    # Then
    wait_drained(redis_client, timeout_s=30)
    assert platform.fans_of(D, d_tag) == set(platform.fans(D))
    assert run(accounts_env, "dlq", "list").count("\n") == 1


def wsgi_post(app: Any, path: str, body: dict[str, Any], env: dict[str, str]) -> str:
    """POST to a WSGI app in process, as gunicorn would; the status line."""
    import io

    payload = json.dumps(body).encode()
    environ = {
        "PATH_INFO": path,
        "REQUEST_METHOD": "POST",
        "CONTENT_LENGTH": str(len(payload)),
        "wsgi.input": io.BytesIO(payload),
        "HTTP_AUTHORIZATION": "Bearer t0k3n",
    }
    seen: list[str] = []
    saved = dict(os.environ)
    os.environ.update(
        {k: env[k] for k in env if k.startswith(("TAGSYNC_", "SECRET_", "COMPONENT_"))}
    )
    try:
        b"".join(app(environ, lambda status, headers: seen.append(status)))
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return seen[0]


@pytest.mark.long  # over 10 s: make test-long (CI runs it) keeps make test under 10 min
def test_a_slow_account_leaves_threads_to_the_others(
    accounts_env: dict[str, str],
    platform: PlatformSim,
    start_worker: Any,
    redis_client: redis.Redis,
) -> None:
    """A answers in 1.5 s on 10 tags at 50 calls/s (enough to hold every thread); B still
    calls at its rate."""
    # Given
    path = Path(accounts_env["TAGSYNC_ACCOUNTS"])
    text = path.read_text().replace('secret = "env:SECRET_0"', 'secret = "env:SECRET_0"\nrate = 50')
    path.write_text(text)
    slow = [create_tag(accounts_env, APPID, f"s{i}") for i in range(10)]
    quick = [create_tag(accounts_env, B, f"f{i}") for i in range(2)]
    platform.post("/_sim/config", {"latency_ms": [1500, 1500]}, appid=APPID)
    for tag_id in slow:
        producers.tag(tag_id, platform.fans(APPID), account=APPID)
    start_worker(processes=2, threads=4, **accounts_env)
    wait_until(lambda: platform.calls(APPID, "tags/members/batchtagging") >= 4, what="A's calls")
    # When
    started = time.monotonic()
    for tag_id in quick:
        producers.tag(tag_id, platform.fans(B), account=B)
    wait_until(lambda: all_tagged(platform, B, quick), timeout_s=60, what="B to finish")
    took = time.monotonic() - started
    # Then: B's 12 calls at 5/s take 2.4 s, plus noise
    assert took < 2.4 + 3.0, f"B took {took:.1f}s beside a slow account"
    assert pending_of(redis_client, APPID) > 0  # A was still at it


@pytest.mark.long  # over 10 s: make test-long (CI runs it) keeps make test under 10 min
def test_one_accounts_flood_does_not_hold_anothers_batches(
    accounts_env: dict[str, str],
    platform: PlatformSim,
    start_worker: Any,
    redis_client: redis.Redis,
) -> None:
    """A backlog of A's messages holds A's batches (to coalesce them), not B's."""
    # Given: B's intents, then 12,000 of A's queued one message each (a backlog that takes
    # longer to merge than B's calls, with margin for a loaded host)
    a_tag = create_tag(accounts_env, APPID, "flood")
    b_tags = [create_tag(accounts_env, B, f"calm{i}") for i in range(2)]
    for tag_id in b_tags:
        producers.tag(tag_id, platform.fans(B), account=B)
    fans = platform.fans(APPID)
    for round_ in range(40):
        op = producers.tag if round_ % 2 == 0 else producers.untag
        for openid in fans:
            op(a_tag, openid, account=APPID)
    # When: workers start on the backlog; B's messages are merged first
    start_worker(processes=2, threads=4, **accounts_env)
    started = time.monotonic()
    wait_until(lambda: all_tagged(platform, B, b_tags), timeout_s=60, what="B to finish")
    took = time.monotonic() - started
    a_queued = int(redis_client.llen("dramatiq:tagsync.intents"))
    # Then: B's 12 calls at 5/s went while A's backlog was still being merged
    assert a_queued > 0, "B finished only after A's backlog was merged (held for it)"
    assert took < 2.4 + 2.0, f"B took {took:.1f}s behind A's backlog"
    wait_drained(redis_client, timeout_s=60)
    assert platform.fans_of(APPID, a_tag) == set()  # the last round untagged
    assert platform.fans_of(B, b_tags[0]) == set(platform.fans(B))


def test_the_accounts_file_is_read_again_while_workers_run(
    accounts_env: dict[str, str],
    platform: PlatformSim,
    start_worker: Any,
    redis_client: redis.Redis,
    tmp_path: Path,
) -> None:
    """An account added to the file is served within seconds, a file that no longer reads
    changes nothing, and a removed account is served no more; no restart."""
    # Given: workers serving A only; B's secret mounted as a file (no variable needed)
    accounts = Path(accounts_env["TAGSYNC_ACCOUNTS"])
    (tmp_path / "b.secret").write_text(SECRETS[B] + "\n", encoding="utf-8")
    only_a = f'[[accounts]]\nappid = "{APPID}"\nsecret = "env:SECRET_0"\n'
    with_b = only_a + f'\n[[accounts]]\nappid = "{B}"\nsecret = "file:b.secret"\n'
    accounts.write_text(only_a, encoding="utf-8")
    worker = start_worker(processes=2, threads=4, **accounts_env)
    a_tag = create_tag(accounts_env, APPID, "file-a")
    # When: B is added to the file
    accounts.write_text(with_b, encoding="utf-8")
    b_tag = create_tag(accounts_env, B, "file-b")
    added_at = time.monotonic()
    producers.tag(b_tag, platform.fans(B), account=B)
    # Then: B's intents are applied, none dead-lettered
    wait_until(lambda: all_tagged(platform, B, [b_tag]), timeout_s=15, what="B served")
    served_after_s = time.monotonic() - added_at
    assert served_after_s < 10
    assert run(accounts_env, "dlq", "list").count("\n") == 1  # the header alone
    # When: the file is broken (a bad edit), then B is removed
    accounts.write_text("[[accounts]\n", encoding="utf-8")
    producers.tag(a_tag, platform.fans(APPID), account=APPID)
    wait_until(lambda: all_tagged(platform, APPID, [a_tag]), timeout_s=15, what="A served")
    wait_until(lambda: "accounts.file_invalid" in worker.logs(), what="the error logged")
    accounts.write_text(only_a, encoding="utf-8")
    producers.untag(b_tag, platform.fans(B)[:3], account=B)
    # Then: B's new intents are refused as an account this deployment does not serve
    wait_drained(redis_client, timeout_s=30)
    letters = [json.loads(line) for line in run(accounts_env, "dlq", "list", "--json").splitlines()]
    assert {(x["account"], x["reason"]) for x in letters} == {(B, "unknown_account")}
    assert len(letters) == 3
    assert all_tagged(platform, B, [b_tag])  # nothing was sent for B once removed
