"""An operator's controls without a restart (issue 22, point 2): pause and resume an account or
one tag, and limits set at run time, from the CLI and over HTTP, against real worker processes."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import redis
import requests

import producers
from tests.helpers import (
    APPID,
    INGEST_TOKEN,
    Sim,
    batch_calls,
    ensure_fans,
    fans_of,
    make_tags,
    tagsync,
    wait_drained,
    wait_until,
)
from worker.wechat import WeChatClient


def status(env: dict[str, str]) -> dict[str, Any]:
    done = tagsync(env, "status", "--json")
    assert done.returncode in (0, 1), done.stderr
    return dict(json.loads(done.stdout))


def pending(report: dict[str, Any], tag_id: int) -> int:
    rows = [t for t in report["tags"] if t["tag_id"] == tag_id]
    return sum(t["pending"]["tag"] + t["pending"]["untag"] + t["in_flight"] for t in rows)


def calls_since(sim: Sim, moment: float) -> list[dict[str, Any]]:
    return [c for c in sim.log() if c["at"] >= moment]


@pytest.mark.long  # over 10 s: make test-long (CI runs it) keeps make test under 10 min
def test_pausing_an_account_stops_its_calls_keeps_intents_and_resume_flushes(
    sim: Sim,
    client: WeChatClient,
    queue: redis.Redis,
    start_worker: Any,
    worker_env: dict[str, str],
) -> None:
    """`tagsync pause` stops every worker's calls within a call's time; intents keep being
    accepted; `status` says who paused and why; `tagsync resume` flushes them all."""
    # Given: two worker processes at 5 calls/s with 20 calls of work
    tags = make_tags(client, 2, "pause")
    fans = ensure_fans(sim, 500)
    start_worker(processes=2, threads=2, TAGSYNC_RATE="5")
    for tag_id in tags:
        producers.tag(tag_id, fans, account=APPID)
    wait_until(lambda: batch_calls(sim) >= 2, what="the first calls")
    # When: an operator pauses the account mid-work
    done = tagsync(worker_env, "pause", "--account", APPID, "--reason", "migrating tags")
    assert done.returncode == 0, done.stderr
    paused_at = time.time()
    time.sleep(1.5)  # an observation window: calls in flight finish, no new one starts
    quiet_from = time.time()
    producers.untag(tags[0], fans[:10], account=APPID)  # accepted and kept while paused
    time.sleep(1.5)
    # Then: no call since shortly after the pause; everything is still waiting
    assert calls_since(sim, quiet_from) == []
    assert len(calls_since(sim, paused_at)) <= 2  # at most the calls in flight (2 processes)
    report = status(worker_env)
    pause = report["accounts"][APPID]["paused"]
    assert pause["reason"] == "operator" and "migrating tags" in pause["message"]
    assert "@" in pause["message"]  # by user@host
    assert pending(report, tags[0]) + pending(report, tags[1]) > 0
    plain = tagsync(worker_env, "status").stdout
    assert "PAUSED (operator" in plain and "until resumed" in plain and "migrating tags" in plain
    # When: resumed
    done = tagsync(worker_env, "resume", "--account", APPID)
    assert done.returncode == 0 and "resumed" in done.stdout, done.stderr
    # Then: every intent applied, last write wins, nothing dead-lettered
    wait_drained(queue, timeout_s=60)
    assert fans_of(sim, tags[0]) == set(fans[10:]) and fans_of(sim, tags[1]) == set(fans)
    assert status(worker_env)["totals"]["dead_letters"] == 0
    again = tagsync(worker_env, "resume", "--account", APPID)
    assert again.returncode == 0 and "was not paused" in again.stdout


def test_a_paused_tag_waits_while_the_accounts_other_tags_flow(
    sim: Sim,
    client: WeChatClient,
    queue: redis.Redis,
    start_worker: Any,
    worker_env: dict[str, str],
) -> None:
    """`tagsync pause --tag T`: T's intents merge and wait (no call for T), other tags go on;
    `status` shows the tag paused by whom; `resume --tag T` sends its flush at once."""
    held, free = make_tags(client, 2, "held")
    fans = ensure_fans(sim, 120)
    start_worker(processes=2, threads=2)
    done = tagsync(worker_env, "pause", "--account", APPID, "--tag", str(held), "--reason", "why")
    assert done.returncode == 0, done.stderr
    # When
    producers.tag(held, fans, account=APPID)
    producers.tag(free, fans, account=APPID)
    producers.untag(held, fans[:20], account=APPID)  # merged while waiting: last write wins
    wait_until(lambda: fans_of(sim, free) == set(fans), what="the free tag applied")
    time.sleep(1)  # an observation window: the held tag gets no call
    # Then
    assert not [c for c in sim.log() if c["tagid"] == held]
    report = status(worker_env)
    row = next(t for t in report["tags"] if t["tag_id"] == held)
    assert row["pending"] == {"tag": 100, "untag": 20}  # one intent per fan: the last
    assert row["paused"]["reason"] == "why" and "@" in row["paused"]["by"]
    assert f"PAUSED by {row['paused']['by']}: why" in tagsync(worker_env, "status").stdout
    # When: resumed
    assert tagsync(worker_env, "resume", "--account", APPID, "--tag", str(held)).returncode == 0
    # Then: applied within a linger, with no help from the sweep
    wait_until(lambda: fans_of(sim, held) == set(fans[20:]), timeout_s=5, what="held applied")
    wait_drained(queue)


@pytest.mark.long  # over 10 s: make test-long (CI runs it) keeps make test under 10 min
def test_limits_set_take_effect_in_every_worker_at_the_next_call_slot(
    sim: Sim,
    client: WeChatClient,
    queue: redis.Redis,
    start_worker: Any,
    worker_env: dict[str, str],
) -> None:
    """`tagsync limits set --rate` holds from the next call slot in every worker process
    (they share one GCRA, whose script reads the limits: a process not yet reloaded would
    reserve slots at the old spacing, and they would show as bursts seconds later); clamped
    to the bounds; shown in `status`; `limits clear` gives the accounts file's back."""
    # Given: two processes at 40 calls/s draining 200 calls of work
    tags = make_tags(client, 10, "limits")
    fans = ensure_fans(sim, 1000)
    start_worker(processes=2, threads=4, TAGSYNC_RATE="40")
    for tag_id in tags:
        producers.tag(tag_id, fans, account=APPID)
    wait_until(lambda: batch_calls(sim) >= 20, what="calls at the first rate")
    # When: the rate is set to 2 calls/s
    done = tagsync(worker_env, "limits", "set", "--account", APPID, "--rate", "2")
    assert done.returncode == 0, done.stderr
    changed_at = time.time()
    time.sleep(0.5)  # slots reserved before the change (at most 250 ms ahead) are used
    window_from = time.time()
    time.sleep(6)  # longer than the 2 s reload interval: no process catches up in it
    # Then: over 6 s at 2/s, at most 12 calls (+1 for a slot's edge), every process alike
    window = [c["at"] - changed_at for c in calls_since(sim, window_from)]
    assert len([at for at in window if at < window_from - changed_at + 6]) <= 13, window
    before = [c for c in sim.log() if changed_at - 1 <= c["at"] < changed_at]
    assert len(before) >= 10  # the old rate really was higher
    report = status(worker_env)["accounts"][APPID]
    assert report["limits_set"]["rate"] == 2 and "@" in report["limits_set"]["by"]
    assert report["rate"]["limit_per_s"] == 2
    assert "(limits set by" in tagsync(worker_env, "status").stdout
    # When: an absurd value is clamped; a non-number refused in one line
    clamped = tagsync(worker_env, "limits", "set", "--account", APPID, "--rate", "99999")
    assert clamped.returncode == 0 and "1000/s" in clamped.stdout, clamped.stderr
    for bad in ("nan", "fast", "-inf"):
        refused = tagsync(worker_env, "limits", "set", "--account", APPID, "--rate", bad)
        assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr
        assert len(refused.stderr.strip().splitlines()) <= 3  # argparse's usage + one line
    # When: cleared, the file's (here TAGSYNC_RATE) applies again and the work drains
    cleared = tagsync(worker_env, "limits", "clear", "--account", APPID)
    assert cleared.returncode == 0 and "cleared" in cleared.stdout
    wait_drained(queue, timeout_s=60)
    assert all(fans_of(sim, t) == set(fans) for t in tags)
    shown = tagsync(worker_env, "limits", "show", "--account", APPID, "--json")
    assert json.loads(shown.stdout) is None


def test_the_http_controls_need_the_token_and_check_what_they_are_given(
    sim: Sim, ingest_url: str, env: dict[str, str]
) -> None:
    """POST /v1/accounts/A/pause|resume|limits: bearer token, a served account, a valid body;
    the same effect as the CLI, by "http <address>"."""
    auth = {"Authorization": f"Bearer {INGEST_TOKEN}"}
    base = f"{ingest_url}/v1/accounts/{APPID}"

    def post(path: str, body: Any, headers: dict[str, str] | None = None) -> requests.Response:
        return requests.post(
            f"{base}/{path}", json=body, headers=auth if headers is None else headers, timeout=10
        )

    # Refused: no token, another account, a bad body, a wrong method
    assert post("pause", {}, headers={}).status_code == 401
    assert post("pause", {}, headers={"Authorization": "Bearer nope"}).status_code == 401
    other = requests.post(f"{ingest_url}/v1/accounts/wxother/pause", headers=auth, timeout=10)
    assert other.status_code == 404
    assert requests.post(f"{base}/nothing", headers=auth, timeout=10).status_code == 404
    assert requests.get(f"{base}/pause", headers=auth, timeout=10).status_code == 405
    bad_pauses: list[Any] = [{"tag": "x"}, {"tag": -1}, {"tag": 1.5}, {"reason": 7}, [1]]
    for body in [*bad_pauses, {"reason": "a\nb"}, "a string"]:
        answer = post("pause", body)
        assert answer.status_code == 400 and "error" in answer.json(), body
    bad_limits: list[Any] = [{}, {"rate": "fast"}, {"rate": 1, "colour": "red"}, {"burst": 2.5}]
    for body in [*bad_limits, {"rate": None}, {"rate": True}]:
        answer = post("limits", body)
        assert answer.status_code == 400 and "error" in answer.json(), body
    broken = requests.post(f"{base}/pause", data=b"{not json", headers=auth, timeout=10)
    assert broken.status_code == 400
    # Accepted: a pause with a reason, shown by status
    answer = post("pause", {"reason": "incident 42"})
    assert answer.status_code == 200 and answer.json()["paused"] is True
    pause = status(env)["accounts"][APPID]["paused"]
    assert pause["reason"] == "operator" and "incident 42 (by http 127.0.0.1)" in pause["message"]
    assert post("resume", {}).json()["resumed"] is True
    assert status(env)["accounts"][APPID]["paused"] is None
    # Limits: set (clamped), read, cleared
    answer = post("limits", {"rate": 5000, "burst": 3, "daily_budget": 900})
    assert answer.status_code == 200
    assert answer.json()["limits"] | {"by": "", "at": 0} == {
        "rate": 1000.0,
        "burst": 3,
        "daily_budget": 900,
        "by": "",
        "at": 0,
    }
    read = requests.get(f"{base}/limits", headers=auth, timeout=10).json()
    assert read["limits"]["by"] == "http 127.0.0.1"
    cleared = requests.delete(f"{base}/limits", headers=auth, timeout=10).json()
    assert cleared["cleared"] is True
    assert requests.get(f"{base}/limits", headers=auth, timeout=10).json()["limits"] is None
    assert INGEST_TOKEN not in json.dumps(status(env))


def test_the_rate_limit_metric_shows_a_rate_set_at_run_time(redis_client: redis.Redis) -> None:
    """`tagsync_account_rate_limit` (the alerts' and the dashboard's reference) is the rate
    set with `limits set` while one is set, and the settings' again after `limits clear`."""
    from worker.accounts import controls
    from worker.base.settings import Settings
    from worker.runtime.metrics_server import BacklogCollector

    env = {"WECHAT_APPID": APPID, "WECHAT_SECRET": "s", "TAGSYNC_RATE": "20"}
    settings = Settings.from_env(env)
    collector = BacklogCollector(redis_client, settings)

    def shown() -> float:
        (family,) = [f for f in collector.collect() if f.name == "tagsync_account_rate_limit"]
        return float({s.labels["account"]: s.value for s in family.samples}[APPID])

    assert shown() == 20
    controls.set_limits(redis_client, APPID, rate=3.5, by="test")
    assert shown() == 3.5
    controls.clear_limits(redis_client, APPID)
    assert shown() == 20
