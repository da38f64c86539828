"""Operators' jobs at scale, with real processes: resumable exports, drain-and-delete of a
tag over 100,000 fans, and admin calls that share the account's gate with the workers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.helpers import (
    APPID,
    FANS,
    Sim,
    batch_calls,
    fans_of,
    start_simulator,
    tagsync,
    wait_until,
)
from worker.gate import AccountGate
from worker.runtime.processes import stop_process
from worker.wechat.client import WeChatClient


@pytest.fixture(scope="module")
def simulator_process() -> Iterator[str]:
    """A simulator of this module's own: its big tags add 130,000 fans, and other modules
    count on the session simulator's 2,000."""
    process, url = start_simulator("--fans", str(FANS))
    yield url
    stop_process(process)


def big_tag(sim: Sim, client: WeChatClient, fans: int, name: str = "big") -> int:
    """A new tag with ``fans`` new fans (the simulator's /_sim/members)."""
    tag_id = client.create_tag(name).id
    answer = sim.post("/_sim/members", {"tag_id": tag_id, "count": fans})
    assert answer["count"] == fans, answer
    return tag_id


def background(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    """A ``tagsync`` command running on its own (stopped by the caller)."""
    return subprocess.Popen(
        [sys.executable, "-m", "worker", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


# -- exports ---------------------------------------------------------------------------------


def exported(cursor: Path) -> int:
    """How many fans an export's cursor file counts (0 while it is being replaced)."""
    try:
        return int(json.loads(cursor.read_text())["count"])
    except (OSError, ValueError, KeyError):
        return 0


def test_an_interrupted_export_resumes_with_no_openid_missing_or_repeated(
    sim: Sim, client: WeChatClient, env: dict[str, str], tmp_path: Path
) -> None:
    """kill -9 during `tags fans --out`; the same command again finishes the file exactly."""
    # Given a tag of 20,000 fans served in pages of 1,000, slowly (80 ms a call)
    tag_id = big_tag(sim, client, 20_000)
    sim.config(page_size=1000, latency_ms=[80, 80])
    out = tmp_path / "fans.txt"
    cursor = Path(f"{out}.cursor")
    # When the export is killed after a few pages
    process = background(env, "tags", "fans", str(tag_id), "--out", str(out))
    try:
        wait_until(
            lambda: (
                cursor.exists() and json.loads(cursor.read_text() or "{}").get("count", 0) >= 3000
            ),
            timeout_s=30,
            what="3 pages exported",
        )
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
    finally:
        stop_process(process)
    partial = json.loads(cursor.read_text())["count"]
    assert 3000 <= partial < 20_000
    # ... and run again
    sim.config(latency_ms=[0, 0])
    resumed = tagsync(env, "tags", "fans", str(tag_id), "--out", str(out))
    # Then the file holds every fan once, and the cursor is gone
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stderr
    lines = out.read_text().splitlines()
    assert len(lines) == len(set(lines)) == 20_000
    assert set(lines) == fans_of(sim, tag_id)
    assert not cursor.exists()


def test_an_export_cursor_of_another_tag_is_refused(
    sim: Sim, client: WeChatClient, env: dict[str, str], tmp_path: Path
) -> None:
    """A cursor file left by an export of another tag stops the command (exit 2), untouched."""
    # Given a cursor of tag 999's export beside the file
    tag_id = client.create_tag("small").id
    out = tmp_path / "fans.txt"
    out.write_text("")
    cursor = Path(f"{out}.cursor")
    cursor.write_text(json.dumps({"account": APPID, "tag_id": 999, "next_openid": "x"}))
    # When exporting another tag into the same file
    result = tagsync(env, "tags", "fans", str(tag_id), "--out", str(out))
    # Then it refuses, naming the other export
    assert result.returncode == 2 and "tag 999" in result.stderr
    assert json.loads(cursor.read_text())["tag_id"] == 999


def test_listings_show_names_and_counts_and_print_json(
    sim: Sim, client: WeChatClient, env: dict[str, str]
) -> None:
    """`user-tags` shows the fan's tags with names and fan counts; --json everywhere."""
    # Given a fan with two tags
    fan = sim.fans(1)[0]
    vip, gold = client.create_tag("VIP").id, client.create_tag("Gold").id
    client.batch_tag(vip, [fan])
    client.batch_tag(gold, [fan])
    # When listing
    text = tagsync(env, "user-tags", fan)
    as_json = json.loads(tagsync(env, "user-tags", fan, "--json").stdout)
    fans = json.loads(tagsync(env, "tags", "fans", str(vip), "--json").stdout)
    tags = json.loads(tagsync(env, "tags", "list", "--json").stdout)
    # Then names and counts are there
    assert text.returncode == 0 and "VIP" in text.stdout and "Gold" in text.stdout
    assert as_json == {
        "openid": fan,
        "tags": [{"id": vip, "name": "VIP", "count": 1}, {"id": gold, "name": "Gold", "count": 1}],
    }
    assert fans == {"tag_id": vip, "openids": [fan]}
    assert {t["name"]: t["count"] for t in tags} == {"VIP": 1, "Gold": 1}


# -- drain and delete ------------------------------------------------------------------------


def test_drain_of_a_tag_over_100000_fans_interrupted_and_resumed(
    sim: Sim,
    client: WeChatClient,
    env: dict[str, str],
    redis_client: redis.Redis,
    start_worker: Any,
) -> None:
    """`tags delete --drain` of a 100,001-fan tag, stopped by Ctrl-C while it waits for the
    workers and run again, untags exactly the surplus and deletes the tag."""
    # Given a tag of 100,001 fans, which WeChat will not delete
    tag_id = big_tag(sim, client, 100_001)
    refused = tagsync(env, "tags", "delete", str(tag_id))
    assert refused.returncode == 1 and "45057" in refused.stderr
    # When the drain starts with no worker running, and is interrupted while it waits
    process = background(env, "tags", "delete", str(tag_id), "--drain")
    key = f"tagsync:{{{APPID}}}:drain:{tag_id}"
    try:
        wait_until(lambda: redis_client.hget(key, "rounds") == b"1", timeout_s=30, what="round 1")
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=15)
    finally:
        stop_process(process)
    # Then it stops (130) saying how to continue; the tag is still there with its fans
    assert process.returncode == 130, err
    assert "run the same command to continue" in err
    assert str(tag_id) in sim.state()["tags"]
    # When workers start and the same command runs again
    start_worker(processes=2, threads=4, TAGSYNC_RATE="20")
    resumed = tagsync(env, "tags", "delete", str(tag_id), "--drain", timeout=120)
    # Then it continued the saved drain and deleted the tag, having untagged only the surplus
    assert resumed.returncode == 0, resumed.stderr
    assert "continuing a drain" in resumed.stderr
    assert str(tag_id) not in sim.state()["tags"]
    sizes = sim.stats()["batch_sizes"]["untagging"]
    assert sum(int(size) * n for size, n in sizes.items()) == 2
    assert not redis_client.exists(key)


def test_drain_refuses_the_reserved_tags(env: dict[str, str], sim: Sim) -> None:
    """Tags 0, 1 and 2 are WeChat's: refused before any call, with the seed's meaning."""
    # Given / When
    result = tagsync(env, "tags", "delete", "2", "--drain")
    # Then
    assert result.returncode == 2 and "0/1/2" in result.stderr
    assert sim.stats()["calls"] == {}


# -- admin calls share the gate --------------------------------------------------------------


def test_admin_calls_share_the_rate_with_busy_workers(
    sim: Sim,
    client: WeChatClient,
    env: dict[str, str],
    queue: redis.Redis,
    start_worker: Any,
) -> None:
    """An export paging while two worker processes flush a backlog at the account's rate:
    together they never exceed it (the simulator answers 45011 beyond it)."""
    import producers

    # Given WeChat allowing 10 calls/s, and workers at TAGSYNC_RATE=10 with a long backlog
    sim.config(rate_per_sec=10, page_size=500)
    tag_id = big_tag(sim, client, 10_000)
    other = client.create_tag("other").id
    fans = sim.fans(3000)
    start_worker(processes=2, threads=4, TAGSYNC_RATE="10", TAGSYNC_LINGER_MS="0")
    producers.tag(other, fans, account=APPID)
    wait_until(lambda: batch_calls(sim) >= 5, timeout_s=30, what="workers calling")
    # When an operator exports a 20-page tag meanwhile
    rated = {**env, "TAGSYNC_RATE": "10"}  # the operator's settings are the workers'
    exported = tagsync(rated, "tags", "fans", str(tag_id), "--json", timeout=60)
    # Then the export is whole and no call went over the rate
    assert exported.returncode == 0, exported.stderr
    assert len(json.loads(exported.stdout)["openids"]) == 10_000
    stats = sim.stats()
    assert stats["errcodes"].get("45011", 0) == 0
    assert stats["max_calls_in_any_second"] <= 10
    assert batch_calls(sim) < 60  # the backlog was still going on


def test_a_spent_daily_budget_stops_admin_commands_before_they_call(
    sim: Sim, env: dict[str, str], redis_client: redis.Redis
) -> None:
    """With TAGSYNC_DAILY_BUDGET=3, the 4th admin call exits 3 naming the pause; WeChat
    sees 3 calls."""
    # Given a budget of 3 calls a day
    budget_env = {**env, "TAGSYNC_DAILY_BUDGET": "3"}
    # When 4 listings run
    results = [tagsync(budget_env, "tags", "list") for _ in range(4)]
    # Then 3 succeed and the 4th stops before calling
    assert [r.returncode for r in results] == [0, 0, 0, 3], results[-1].stderr
    assert "daily_budget" in results[-1].stderr and "nothing was spent" in results[-1].stderr
    assert sim.stats()["calls"].get("tags/get") == 3
    assert AccountGate(redis_client, rate=20).budget_used(APPID) == 3


def test_a_45009_met_by_an_admin_call_pauses_that_api_for_everyone(
    sim: Sim, env: dict[str, str], redis_client: redis.Redis
) -> None:
    """WeChat's daily quota of tags/get runs out under a command: it stops (exit 3), the API
    is paused in the gate, and the next command does not call WeChat at all."""
    # Given WeChat allows 2 tags/get calls a day
    sim.config(daily_quota=2)
    assert tagsync(env, "tags", "list").returncode == 0
    assert tagsync(env, "tags", "list").returncode == 0
    # When a third and a fourth listing run
    third = tagsync(env, "tags", "list")
    fourth = tagsync(env, "tags", "list")
    # Then both stop with exit 3; WeChat saw the third only; the pause is the API's
    assert third.returncode == 3 and "45009" in third.stderr, third.stderr
    assert fourth.returncode == 3
    assert sim.stats()["calls"]["tags/get"] == 3
    pauses = AccountGate(redis_client, rate=20).pauses(APPID, ("tags/get",))
    assert set(pauses) == {"tags/get"} and pauses["tags/get"].errcode == "45009"
    status = json.loads(tagsync(env, "status", "--json").stdout)
    assert status["accounts"][APPID]["pauses"]["tags/get"]["errcode"] == "45009"
