"""The `tagsync` commands as an operator runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

import pytest
import redis

import producers
from tests.helpers import APPID, Sim, fans_of, tagsync
from worker.runtime.redis_server import RedisServer


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"TAGSYNC_REDIS_URL": ""}, "TAGSYNC_REDIS_URL must be set"),
        ({"WECHAT_SECRET": ""}, "WECHAT_SECRET must be set"),
        (
            {"TAGSYNC_REDIS_URL": "redis://127.0.0.1:1/0"},
            "Redis at TAGSYNC_REDIS_URL does not answer",
        ),
        ({"WECHAT_SECRET": "not-the-secret"}, "WeChat refuses the credentials"),
        ({"TAGSYNC_RATE": "fast"}, "TAGSYNC_RATE='fast' is not a float"),
    ],
)
def test_worker_refuses_to_start_without_its_settings(
    env: dict[str, str], change: dict[str, str], message: str
) -> None:
    """`tagsync worker` names what is missing or wrong, and exits 2 without starting."""
    result = tagsync({**env, **change}, "worker", "--processes", "1")
    assert result.returncode == 2
    assert message in result.stderr
    assert "dramatiq" not in result.stderr.lower()


def test_worker_command_runs_the_pipeline(
    env: dict[str, str], sim: Sim, redis_client: redis.Redis
) -> None:
    """`tagsync worker` starts dramatiq with tagsync's actors, which apply intents."""
    # Given
    tag = sim.api("tags/create", {"tag": {"name": "cli"}})["tag"]["id"]
    process = subprocess.Popen(
        [sys.executable, "-m", "worker", "worker", "--processes", "1", "--threads", "2"],
        env={**env, "TAGSYNC_LINGER_MS": "50"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        # When
        producers.configure(redis_url=env["TAGSYNC_REDIS_URL"])
        producers.tag(tag, sim.fans(3), account=APPID)
        deadline = time.monotonic() + 30
        while len(fans_of(sim, tag)) < 3:
            assert time.monotonic() < deadline, "the worker applied nothing"
            time.sleep(0.1)
    finally:
        process.terminate()
        process.wait(timeout=20)
        producers.configure(None)
    # Then
    assert fans_of(sim, tag) == set(sim.fans(3))


def test_status_shows_pending_per_tag_and_op(
    env: dict[str, str], redis_client: redis.Redis
) -> None:
    """`tagsync status --json` counts pending intents per tag and op, with the oldest age."""
    from producers.intents import make_intent
    from worker.pending import PendingStore

    store = PendingStore(redis_client)
    now = time.time()
    store.ingest([make_intent("tag", 5, f"o{i}", now - 2, APPID) for i in range(3)])
    store.ingest([make_intent("untag", 5, "x", now, APPID), make_intent("tag", 9, "y", now, APPID)])
    result = tagsync(env, "status", "--json")
    assert result.returncode == 0, result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    by_tag = {t["tag_id"]: t for t in report["tags"]}
    assert by_tag[5]["pending"] == {"tag": 3, "untag": 1}
    assert by_tag[9]["pending"] == {"tag": 1, "untag": 0}
    assert by_tag[5]["oldest_pending_age_s"] >= 2
    assert report["totals"]["pending"] == 5
    table = tagsync(env, "status")
    assert "totals: 5 pending" in table.stdout


def test_tags_commands(env: dict[str, str], sim: Sim) -> None:
    """tags create/list/rename/fans/delete and user-tags, as the seed's calls."""
    assert "created tag 100 'vip'" in tagsync(env, "tags", "create", "vip").stdout
    assert tagsync(env, "tags", "rename", "100", "VIP").returncode == 0
    sim.api("tags/members/batchtagging", {"tagid": 100, "openid_list": sim.fans(2)})
    listing = json.loads(tagsync(env, "tags", "list", "--json").stdout)
    assert listing == [{"id": 100, "name": "VIP", "count": 2}]
    assert set(tagsync(env, "tags", "fans", "100").stdout.split()) == set(sim.fans(2))
    assert tagsync(env, "user-tags", sim.fans(1)[0]).stdout.split()[-3:] == ["100", "2", "VIP"]
    refused = tagsync(env, "tags", "delete", "1")
    assert refused.returncode == 2 and "45058" in refused.stderr  # refused before any call
    assert tagsync(env, "tags", "delete", "100").returncode == 0
    too_long = tagsync(env, "tags", "create", "x" * 31)
    assert too_long.returncode == 2 and "31 UTF-8 bytes" in too_long.stderr


def run_demo(
    *args: str, timeout: float, redis_url: str | None = None
) -> subprocess.CompletedProcess[str]:
    """`tagsync demo ARGS` on embedded defaults (no TAGSYNC_ or WECHAT_ settings but, if
    given, ``redis_url`` as TAGSYNC_REDIS_URL)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TAGSYNC_", "WECHAT_"))}
    if redis_url is not None:
        env["TAGSYNC_REDIS_URL"] = redis_url
    return subprocess.run(
        [sys.executable, "-m", "worker", "demo", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.mark.slow
def test_demo_passes_and_keeps_out_of_a_redis_in_use() -> None:
    """`tagsync demo` runs everything on embedded defaults and ends with PASS; in a shell
    whose TAGSYNC_REDIS_URL names a Redis holding tagsync data (dev.env exported), it runs
    on a Redis of its own and leaves that one as it was."""
    with RedisServer() as deployment:
        # Given: a deployment's Redis, in use
        connection = redis.Redis.from_url(deployment.url)
        connection.hset("tagsync:workers", "host:1", "{}")
        before = sorted(connection.keys("*"))
        # When
        result = run_demo("--duration", "3", "--fans", "500", timeout=180, redis_url=deployment.url)
        # Then
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
        last = result.stdout.strip().splitlines()[-1]
        assert last.startswith("PASS:") and "0 wrong" in last
        assert "holds tagsync data: the demo starts its own" in result.stdout
        assert sorted(connection.keys("*")) == before
        connection.close()


@pytest.mark.slow
def test_demo_with_several_accounts_passes_for_each() -> None:
    """`tagsync demo --accounts 4`: four accounts (one through the component), each
    checked on its own line, and PASS; an empty Redis named by TAGSYNC_REDIS_URL is used."""
    with RedisServer() as given:
        result = run_demo(
            "--duration", "3", "--fans", "300", "--accounts", "4", timeout=240, redis_url=given.url
        )
        assert redis.Redis.from_url(given.url).dbsize() > 0  # its intents, tags, tokens
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "(TAGSYNC_REDIS_URL, empty)" in result.stdout
    lines = result.stdout.strip().splitlines()
    checked = [line for line in lines if line.startswith("  ok ")]
    assert len(checked) == 4 and sum("(component)" in line for line in checked) == 1
    assert lines[-1].startswith("PASS:") and "of 4 accounts" in lines[-1]


def test_dlq_filters_by_reason_and_account_and_shows_the_account(
    env: dict[str, str], redis_client: redis.Redis
) -> None:
    """`dlq list/replay --reason R --account A` take only those letters; list shows each
    letter's account."""
    from worker.dead_letters import DeadLetter, DeadLetters

    # Given: letters of two accounts and two reasons
    other = "wxotheraccount01"
    letters = [
        DeadLetter(account, 134, "tag", f"o-dlq-{account[-2:]}-{reason[:4]}-{i}", 1.0, reason)
        for account in (APPID, other)
        for reason in ("tag_gone", "retries_exhausted")
        for i in range(2)
    ]
    DeadLetters(redis_client).add(letters)
    # When
    listed = tagsync(env, "dlq", "list", "--reason", "tag_gone", "--account", other)
    # Then
    rows = listed.stdout.splitlines()
    assert rows[0].split()[:3] == ["DEAD-LETTERED", "ACCOUNT", "TAG"]
    assert len(rows) == 3 and all(other in row and "tag_gone" in row for row in rows[1:])
    # When: replayed
    replayed = tagsync(env, "dlq", "replay", "--reason", "tag_gone", "--account", other)
    # Then: those two went back to the queue; the other six stay
    assert "replayed 2 dead letters" in replayed.stdout, replayed.stderr
    kept = [json.loads(line) for line in tagsync(env, "dlq", "export").stdout.splitlines()]
    assert len(kept) == 6
    assert not [k for k in kept if k["account"] == other and k["reason"] == "tag_gone"]


def test_status_shows_the_rate_the_workers_use(
    env: dict[str, str], sim: Sim, start_worker: Any, redis_client: redis.Redis
) -> None:
    """`tagsync status` shows the limits the workers called with, not its caller's own."""
    from tests.helpers import wait_drained

    # Given: no call yet; the caller's environment says 99 calls/s
    caller = {**env, "TAGSYNC_RATE": "99"}
    before = json.loads(tagsync(caller, "status", "--json").stdout)["accounts"][APPID]["rate"]
    assert (before["limit_per_s"], before["source"]) == (99, "settings")
    # When: workers at 7 calls/s make calls
    start_worker(processes=1, threads=2, TAGSYNC_RATE="7", TAGSYNC_BURST="2")
    tag = sim.api("tags/create", {"tag": {"name": "rate-shown"}})["tag"]["id"]
    producers.configure(redis_url=env["TAGSYNC_REDIS_URL"])
    try:
        producers.tag(tag, sim.fans(3), account=APPID)
        wait_drained(redis_client)
    finally:
        producers.configure(None)
    # Then
    report = json.loads(tagsync(caller, "status", "--json").stdout)["accounts"][APPID]
    assert report["rate"]["limit_per_s"] == 7 and report["rate"]["burst"] == 2
    assert report["rate"]["source"] == "workers"
    plain = tagsync(caller, "status").stdout
    assert f"account {APPID}: running; rate 7/s," in plain
