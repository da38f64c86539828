"""A worker's life as an orchestrator sees it (issue 14, points 4 and 5), with real processes.

- Clean shutdown: SIGTERM to ``tagsync worker`` (which becomes dramatiq's main process)
  stops it within seconds; it leaves no lease held, no message unacknowledged and every
  tag with work a flush on the queue, so a replacement calls WeChat at once, not after a
  lease expires; a call in flight is waited for and acknowledged, never sent twice.
- Health: heartbeats of each worker process in ``tagsync status``; ``status --check``
  exits 0 healthy, 1 degraded, 2 down; every command meets an unreachable Redis or WeChat
  with one line and exit 2.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import redis

import producers
from tests.helpers import (
    APPID,
    SECRET,
    Sim,
    batch_calls,
    ensure_fans,
    fans_of,
    limit_rate_from_next_second,
    make_tags,
    queued_backlog,
    tagsync,
    wait_drained,
    wait_until,
)
from worker.dead_letters import DeadLetters
from worker.pending import PendingStore
from worker.queues import FLUSH_QUEUE
from worker.runtime.launch import WorkerGroup
from worker.runtime.lifecycle import HEARTBEATS_KEY
from worker.runtime.processes import free_port
from worker.wechat import WeChatClient

pytestmark = pytest.mark.slow

#: WeChat's read timeout the shutdown tests run with: a lease then lasts 3.05 + 30 + 5 s,
#: so a tag whose lease was left held would wait 38 s for a replacement.
LONG_WECHAT_TIMEOUT_S = 30
#: What dramatiq waits at most for a stopping worker: connect + read timeout + margin, s.
SHUTDOWN_BOUND_S = 3.05 + LONG_WECHAT_TIMEOUT_S + 5


class TagsyncWorker(WorkerGroup):
    """``tagsync worker`` as deployed: its checks, then an exec into dramatiq's main process,
    the pid an orchestrator signals (``WorkerGroup`` starts dramatiq directly)."""

    def __init__(self, env: dict[str, str], *, processes: int, threads: int) -> None:
        self.env = env
        self.processes = processes
        self.started_at = time.time()
        # Closed (and removed) by stop(), as WorkerGroup's.
        self.log = tempfile.NamedTemporaryFile(prefix="tagsync-", suffix=".log", delete=False)  # noqa: SIM115
        command = ["worker", "--processes", str(processes), "--threads", str(threads)]
        self.process = subprocess.Popen(
            [sys.executable, "-m", "worker", *command],
            env=env,
            stdout=self.log,
            stderr=self.log,
            start_new_session=True,
        )


@pytest.fixture
def start_tagsync_worker(worker_env: dict[str, str]) -> Iterator[Callable[..., TagsyncWorker]]:
    """Start ``tagsync worker`` processes (stopped at teardown)."""
    started: list[TagsyncWorker] = []

    def start(*, processes: int = 2, threads: int = 4, **env: str) -> TagsyncWorker:
        settings = {"TAGSYNC_METRICS_PORT": str(free_port()), "TAGSYNC_METRICS_HOST": "127.0.0.1"}
        worker = TagsyncWorker(
            {**worker_env, **settings, **env}, processes=processes, threads=threads
        )
        started.append(worker)
        worker.wait_ready()
        return worker

    yield start
    for worker in started:
        worker.stop()


def sigterm(worker: WorkerGroup) -> float:
    """SIGTERM to the main process alone (as Kubernetes and Docker send it); seconds to exit."""
    began = time.monotonic()
    os.kill(worker.process.pid, signal.SIGTERM)
    worker.process.wait(timeout=SHUTDOWN_BOUND_S + 10)
    return time.monotonic() - began


def events(worker: WorkerGroup, name: str) -> list[dict[str, Any]]:
    """The worker's JSON log lines whose event is ``name``."""
    found = []
    for line in worker.logs().splitlines():
        if line.startswith("{") and f'"{name}"' in line:
            entry = json.loads(line)
            if entry.get("event") == name:
                found.append(entry)
    return found


def at(entry: dict[str, Any]) -> float:
    """A log line's timestamp, epoch seconds."""
    return datetime.fromisoformat(entry["timestamp"].replace("Z", "+00:00")).timestamp()


def leases(connection: redis.Redis) -> list[str]:
    """Every tag lease in Redis (a held one keeps other flushes off its tag)."""
    return [key.decode() for key in connection.scan_iter("tagsync:*:lease")]


def batches_held(connection: redis.Redis) -> list[str]:
    """In-flight and split batches (a flush's work not yet settled)."""
    return [
        key.decode()
        for pattern in ("tagsync:*:inflight", "tagsync:*:split:*")
        for key in connection.scan_iter(pattern)
    ]


def unacked_messages(connection: redis.Redis) -> int:
    """Messages fetched by a worker and neither acknowledged nor put back."""
    return sum(int(connection.scard(key)) for key in connection.scan_iter("dramatiq:__acks__.*"))


def queued_flushes(connection: redis.Redis) -> set[int]:
    """Tags with a flush message waiting in the flush queue or its delay queue."""
    tags = set()
    for queue in (FLUSH_QUEUE, f"{FLUSH_QUEUE}.DQ"):
        for raw in connection.hvals(f"dramatiq:{queue}.msgs"):
            message = json.loads(raw)
            if message["actor_name"] == "flush":
                tags.add(int(message["args"][1]))
    return tags


def tags_with_work(connection: redis.Redis) -> set[int]:
    """Tags with intents pending, in flight or splitting."""
    return {status.tag_id for status in PendingStore(connection).status() if status.unsettled}


def sent_ok(sim: Sim) -> Counter[tuple[int, str]]:
    """How many times each (tag, openid) went out in a batch call WeChat answered with 0."""
    sent: Counter[tuple[int, str]] = Counter()
    for call in sim.log():
        if call["errcode"] == "0":
            sent.update((int(call["tagid"]), openid) for openid in call["openids"])
    return sent


def status_json(env: dict[str, str]) -> dict[str, Any]:
    """``tagsync status --json``."""
    result = tagsync(env, "status", "--json")
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout))


def beats(env: dict[str, str]) -> dict[int, dict[str, Any]]:
    """The workers ``tagsync status --json`` lists, by pid."""
    return {worker["pid"]: worker for worker in status_json(env)["workers"]}


# -- clean shutdown ------------------------------------------------------------------------


@pytest.mark.long
def test_sigterm_mid_run_hands_every_tag_to_a_replacement_at_once(
    sim: Sim,
    client: WeChatClient,
    queue: redis.Redis,
    start_tagsync_worker: Callable[..., TagsyncWorker],
) -> None:
    """SIGTERM to `tagsync worker` (2 x 4 threads) at 20 calls/s: it exits in about 2 s,
    holds no lease and no message, leaves every tag with work a queued flush; a replacement
    calls within a second of starting (a held lease would cost 38 s) and sends every intent
    once: all land, nothing dead-lettered, no 45011."""
    # Given: 20 tags x 500 fans = 200 full batches at 20 calls/s (10 s of calls), queued
    # before the worker starts; the tags are made in an earlier second than the calls
    tags, fans = queued_backlog(sim, client, tags=20, fans=500, prefix="term")
    limit_rate_from_next_second(sim, 20)
    settings = {"TAGSYNC_RATE": "20", "TAGSYNC_WECHAT_TIMEOUT_S": str(LONG_WECHAT_TIMEOUT_S)}
    worker = start_tagsync_worker(processes=2, threads=4, **settings)
    lease_ms = [0]

    def running() -> bool:
        for key in leases(queue):
            lease_ms[0] = max(lease_ms[0], int(queue.pttl(key)))
        return batch_calls(sim) >= 60

    wait_until(running, timeout_s=30, what="60 batch calls", poll_s=0.02)
    assert lease_ms[0] > 30_000  # a lease held by a flush outlives WeChat's 30 s timeout
    # When: SIGTERM mid-run
    exit_s = sigterm(worker)
    stopped_at = time.time()
    calls_at_stop = batch_calls(sim)
    # Then: a clean exit within about 2 s, far inside dramatiq's bound of 38 s
    assert worker.process.returncode == 0, worker.logs()[-3000:]
    assert exit_s < 5.0, f"exit took {exit_s:.1f} s"
    stopped = events(worker, "worker.stopped")
    assert len(stopped) == 2 and "Killing worker process" not in worker.logs()
    # Then: nothing held: no lease, no batch in flight, no message fetched and not put back,
    # no heartbeat left; every tag with work left has its next flush on the queue
    assert leases(queue) == []
    assert batches_held(queue) == []
    assert unacked_messages(queue) == 0
    assert queue.hlen(HEARTBEATS_KEY) == 0
    waiting = tags_with_work(queue)
    assert 60 <= calls_at_stop < 200 and waiting  # stopped mid-run
    assert waiting <= queued_flushes(queue), waiting - queued_flushes(queue)
    # When: a replacement starts
    replacement = start_tagsync_worker(processes=2, threads=4, **settings)
    ready = min(at(e) for e in events(replacement, "Worker process is ready for action."))
    wait_drained(queue, timeout_s=60)
    # Then: it calls WeChat at once, and every waiting tag within a few seconds
    calls = [c for c in sim.log() if c["at"] >= stopped_at]
    first_call_s = min(c["at"] for c in calls) - ready
    from_start_s = min(c["at"] for c in calls) - replacement.started_at
    per_tag = {t: min(c["at"] for c in calls if c["tagid"] == t) - ready for t in waiting}
    print(
        f"\nexit {exit_s:.2f} s (processes: {[e['stop_s'] for e in stopped]} s); "
        f"{calls_at_stop} of 200 calls before the stop, {len(waiting)} tags left; first call "
        f"{first_call_s:.2f} s after ready ({from_start_s:.2f} s after start); every left tag "
        f"called within {max(per_tag.values()):.2f} s; lease {lease_ms[0] / 1000:.1f} s"
    )
    assert first_call_s < 1.0
    assert max(per_tag.values()) < 5.0  # a lease left held: 38 s
    # Then: each intent went out exactly once, and all landed
    sent = sent_ok(sim)
    assert set(sent) == {(t, fan) for t in tags for fan in fans}
    assert max(sent.values()) == 1
    assert batch_calls(sim) == 200
    assert all(fans_of(sim, t) == set(fans) for t in tags)
    assert DeadLetters(queue).count() == 0
    assert "45011" not in sim.stats()["errcodes"]


def test_sigterm_at_a_low_rate_hands_the_flushes_on_the_timer_to_the_queue(
    sim: Sim,
    client: WeChatClient,
    queue: redis.Redis,
    start_tagsync_worker: Callable[..., TagsyncWorker],
) -> None:
    """At 3 calls/s a flush waiting for its slot is held by its process's own timer, off the
    queue: on SIGTERM those go to the queue at once, so every tag with work left has its
    next flush there (else the sweep finds them, seconds later); a replacement sends every
    intent once, and the rate holds across the hand-over."""
    # Given: 6 tags x 150 fans = 18 batches at 3 calls/s (6 s of calls)
    tags, fans = queued_backlog(sim, client, tags=6, fans=150, prefix="lowterm")
    limit_rate_from_next_second(sim, 3)
    worker = start_tagsync_worker(processes=2, threads=4, TAGSYNC_RATE="3")
    wait_until(lambda: batch_calls(sim) >= 6, timeout_s=20, what="6 batch calls")
    # When
    exit_s = sigterm(worker)
    # Then: a clean exit, nothing held, every tag with work left on the queue
    assert worker.process.returncode == 0, worker.logs()[-3000:]
    assert exit_s < 5.0, f"exit took {exit_s:.1f} s"
    assert leases(queue) == [] and batches_held(queue) == [] and unacked_messages(queue) == 0
    waiting = tags_with_work(queue)
    assert waiting, "stopped after the last call"
    assert waiting <= queued_flushes(queue), waiting - queued_flushes(queue)
    # When: a replacement runs the rest
    start_tagsync_worker(processes=2, threads=4, TAGSYNC_RATE="3")
    wait_drained(queue, timeout_s=60)
    # Then
    sent = sent_ok(sim)
    assert set(sent) == {(t, fan) for t in tags for fan in fans}
    assert max(sent.values()) == 1
    assert "45011" not in sim.stats()["errcodes"]


@pytest.mark.long  # about 12 s; make test keeps the hand-over tests of shorter stops
def test_sigterm_while_wechat_is_slow_waits_for_the_calls_in_flight(
    sim: Sim,
    client: WeChatClient,
    queue: redis.Redis,
    start_tagsync_worker: Callable[..., TagsyncWorker],
) -> None:
    """WeChat answering in 2 s: on SIGTERM every call in flight is answered and acknowledged
    (no intent is sent twice), no new call starts, and the worker exits within a call's
    time plus about 2 s."""
    # Given: 8 tags x 200 fans = 32 batches; every answer takes 2 s
    latency_s = 2.0
    tags = make_tags(client, 8, prefix="slow")
    fans = ensure_fans(sim, 200)
    for tag in tags:
        producers.tag(tag, fans, account=APPID)
    sim.config(latency_ms=[latency_s * 1000, latency_s * 1000])
    settings = {"TAGSYNC_RATE": "20", "TAGSYNC_WECHAT_TIMEOUT_S": str(LONG_WECHAT_TIMEOUT_S)}
    worker = start_tagsync_worker(processes=2, threads=4, **settings)
    wait_until(lambda: len(events(worker, "batch")) >= 4, timeout_s=20, what="4 answered calls")
    # When
    exit_s = sigterm(worker)
    # Then: calls in flight when the stop began were answered after it, each in 2 s
    stopping = [at(e) for e in events(worker, "worker.stopping")]
    assert len(stopping) == 2
    finished = [e for e in events(worker, "batch") if at(e) > min(stopping)]
    assert finished, "no call in flight was waited for"
    assert all(e["duration"] >= latency_s * 0.95 and e["errcode"] == 0 for e in finished)
    # Then: no call began after the stop (a flush takes no batch once it is stopping)
    began_after = [c for c in sim.log() if c["at"] > max(stopping) + 0.1]
    assert began_after == []
    # Then: out within a call's time, plus dramatiq's one-second look at its flag
    print(f"\nexit {exit_s:.2f} s with {len(finished)} calls of {latency_s:g} s in flight")
    assert worker.process.returncode == 0
    assert exit_s < latency_s + 3.0
    assert leases(queue) == [] and batches_held(queue) == [] and unacked_messages(queue) == 0
    # When: WeChat is quick again and a replacement runs the rest
    sim.config(latency_ms=[0, 0])
    start_tagsync_worker(processes=2, threads=4, **settings)
    wait_drained(queue, timeout_s=60)
    # Then: the answered calls were acknowledged: each intent went out exactly once
    sent = sent_ok(sim)
    assert set(sent) == {(t, fan) for t in tags for fan in fans}
    assert max(sent.values()) == 1
    assert all(fans_of(sim, t) == set(fans) for t in tags)
    assert DeadLetters(queue).count() == 0


def test_sigterm_to_the_whole_process_group_stops_as_cleanly(
    sim: Sim,
    client: WeChatClient,
    queue: redis.Redis,
    start_tagsync_worker: Callable[..., TagsyncWorker],
) -> None:
    """SIGTERM to every process of the group (systemd's KillMode=control-group, honcho,
    `kill -TERM -PGID`) stops the workers as cleanly as SIGTERM to the main process alone."""
    # Given: a run at 20 calls/s
    tags = make_tags(client, 10, prefix="group")
    fans = ensure_fans(sim, 500)
    for tag in tags:
        producers.tag(tag, fans, account=APPID)
    settings = {"TAGSYNC_RATE": "20", "TAGSYNC_WECHAT_TIMEOUT_S": str(LONG_WECHAT_TIMEOUT_S)}
    worker = start_tagsync_worker(processes=2, threads=4, **settings)
    wait_until(lambda: batch_calls(sim) >= 20, timeout_s=20, what="20 batch calls")
    # When: the signals in the order a group's SIGTERM brings them: every process gets its
    # own, then dramatiq's main process forwards one to each worker process (sent one by one
    # here, so the kernel cannot merge the two)
    for pid in worker.children():
        os.kill(pid, signal.SIGTERM)
    wait_until(
        lambda: worker.logs().count("Stopping worker process") == 2, what="the first SIGTERMs"
    )
    sigterm(worker)
    # Then
    assert "Killing worker process" not in worker.logs()
    assert worker.process.returncode == 0
    assert leases(queue) == [] and unacked_messages(queue) == 0
    assert queue.hlen(HEARTBEATS_KEY) == 0


# -- heartbeats ----------------------------------------------------------------------------


@pytest.mark.long  # waits out the 20 s a heartbeat stays fresh
def test_heartbeats_list_each_process_and_a_killed_one_reads_gone_after_20_s(
    sim: Sim,
    client: WeChatClient,
    queue: redis.Redis,
    worker_env: dict[str, str],
    start_worker: Any,
) -> None:
    """`tagsync status` lists each worker process (host, pid, start, threads, messages, last
    message); a SIGTERM'd process removes its entry; a kill -9'd one's reads GONE once it
    has not beaten for 20 s, and with no live worker `status --check` says down (exit 2)."""
    # Given: a group killed with kill -9 just after its first beats (its entries stay)
    killed = start_worker(processes=2, threads=2)
    wait_until(lambda: len(beats(worker_env)) == 2, timeout_s=5, what="first beats")
    killed_pids = set(beats(worker_env))
    assert killed_pids <= set(killed.children())
    killed.kill()
    killed_at = time.monotonic()
    # Given: a group that handles messages
    booted = time.time()
    live = start_worker(processes=2, threads=4)
    live_pids = set(live.children()) - killed_pids
    tags = make_tags(client, 4, prefix="beat")
    for number, fan in enumerate(sim.fans(40)):  # 40 messages: both processes take some
        producers.tag(tags[number % 4], fan, account=APPID)
    wait_drained(queue)
    handled = time.time()

    def counted() -> bool:  # a process beats every 5 s
        found = beats(worker_env)
        return all(found.get(pid, {}).get("messages") for pid in live_pids & set(found))

    wait_until(counted, timeout_s=12, what="beats with messages", poll_s=0.5)
    # Then: each live process, as it described itself
    found = beats(worker_env)
    assert set(found) == killed_pids | (live_pids & set(found))
    live_beats = [found[pid] for pid in live_pids if pid in found]
    assert len(live_beats) == 2
    host = socket.gethostname()
    for beat in live_beats:
        assert beat["name"] == f"{host}:{beat['pid']}" and beat["host"] == host
        assert beat["alive"] is True and beat["threads"] == 4
        assert booted - 1 <= beat["started_at"] <= handled
        assert beat["messages"] >= 1
        assert beat["last_message_age_s"] is not None
        assert 0 <= beat["last_message_age_s"] <= time.time() - booted
    # Then: the plain text says the same, a line a process
    text = tagsync(worker_env, "status").stdout
    for beat in live_beats:
        line = re.search(rf"^worker {re.escape(beat['name'])}: (.*)$", text, re.MULTILINE)
        assert line is not None, text
        assert re.fullmatch(
            r"alive, 4 threads, up since \d\d:\d\d:\d\d, \d+ messages, last \d+\.\d s ago",
            line.group(1),
        ), line.group(1)
    # When: SIGTERM
    sigterm(live)
    # Then: its entries are gone; the killed group's are still there
    assert set(beats(worker_env)) == killed_pids
    # When: the killed group's last beat is 20 s old
    wait_until(
        lambda: not any(b["alive"] for b in beats(worker_env).values()),
        timeout_s=30,
        what="the killed processes to read gone",
        poll_s=0.5,
    )
    gone_after_s = time.monotonic() - killed_at
    # Then: GONE in the plain text, and down for an orchestrator
    text = tagsync(worker_env, "status").stdout
    assert len(re.findall(r"^worker \S+: GONE \(no heartbeat for 2\d s\)", text, re.MULTILINE)) == 2
    check = tagsync(worker_env, "status", "--check")
    print(f"\nkilled processes read gone {gone_after_s:.1f} s after kill -9")
    assert 15 <= gone_after_s <= 26
    assert check.returncode == 2, check.stdout
    assert check.stdout.splitlines() == [
        "down: 0 live worker processes, 0 pending, 0 dead letters",
        "  no live worker: 2 without a heartbeat for 20 s",
    ]


# -- status --check ------------------------------------------------------------------------


def test_status_check_is_healthy_then_degraded_by_a_pause_then_healthy_again(
    sim: Sim,
    client: WeChatClient,
    queue: redis.Redis,
    worker_env: dict[str, str],
    start_worker: Any,
) -> None:
    """A live worker and no backlog: exit 0; a credential error pauses the account: exit 1
    naming the pause; the pause lifted and the backlog applied: exit 0 again."""
    # Given: no worker yet: down
    down = tagsync(worker_env, "status", "--check")
    assert down.returncode == 2
    assert down.stdout.splitlines()[1:] == ["  no live worker: none has sent a heartbeat"]
    # When: a worker runs, idle
    start_worker(processes=1, threads=2)
    healthy = tagsync(worker_env, "status", "--check")
    # Then
    assert healthy.returncode == 0, healthy.stdout
    assert healthy.stdout == "healthy: 1 live worker processes, 0 pending, 0 dead letters\n"
    # When: WeChat refuses the credentials on the tagging calls
    tag = client.create_tag("paused").id
    sim.config(forced_errcodes={"tags/members/batchtagging": 48001})
    producers.tag(tag, sim.fans(60), account=APPID)
    wait_until(lambda: sim.stats()["errcodes"].get("48001", 0) >= 1, what="48001")
    degraded = tagsync(worker_env, "status", "--check")
    as_json = json.loads(tagsync(worker_env, "status", "--check", "--json").stdout)
    # Then
    assert degraded.returncode == 1, degraded.stdout
    first, *problems = degraded.stdout.splitlines()
    assert first == "degraded: 1 live worker processes, 60 pending, 0 dead letters"
    assert len(problems) == 1
    assert problems[0].startswith(f"  account {APPID} paused (credentials, errcode 48001): ")
    assert as_json["health"] == {"status": "degraded", "problems": [problems[0].strip()]}
    # When: the credentials work again and the pause is lifted
    sim.config(forced_errcodes={})
    assert tagsync(worker_env, "quota", "reset").returncode == 0
    wait_drained(queue)
    # Then
    again = tagsync(worker_env, "status", "--check")
    assert again.returncode == 0, again.stdout
    assert fans_of(sim, tag) == set(sim.fans(60))


def test_status_check_is_degraded_by_an_old_backlog_and_a_token_never_had(
    sim: Sim, queue: redis.Redis, worker_env: dict[str, str], start_worker: Any
) -> None:
    """A live worker that cannot reach WeChat, with intents of 5 minutes ago: exit 1, "no
    access token while work waits"; with --max-age 60 the backlog's age is named too."""
    # Given: the worker's WeChat does not answer (connection refused); its retries are slow
    # and many, so the intents stay pending
    worker = start_worker(
        processes=1,
        threads=2,
        WECHAT_API_BASE=f"http://127.0.0.1:{free_port()}",
        TAGSYNC_MAX_ATTEMPTS="1000",
        TAGSYNC_BACKOFF_MIN_MS="2000",
        TAGSYNC_BACKOFF_MAX_MS="2000",
    )
    producers.tag(100, sim.fans(120), account=APPID, ts=time.time() - 300)
    wait_until(lambda: events(worker, "batch.retry"), what="a call that could not be made")
    # When
    default = tagsync(worker_env, "status", "--check")
    strict = tagsync(worker_env, "status", "--check", "--max-age", "60")
    # Then
    assert default.returncode == 1, default.stdout
    first, *problems = default.stdout.splitlines()
    assert first.startswith("degraded: 1 live worker processes, ")
    assert len(problems) == 1
    no_token = (
        rf"  account {APPID}: no access token while work waits 3\d\d s \(token refresh failing\?\)"
    )
    assert re.fullmatch(no_token, problems[0]), problems
    assert strict.returncode == 1, strict.stdout
    _, *strict_problems = strict.stdout.splitlines()
    assert len(strict_problems) == 2
    old = rf"  account {APPID} tag 100: oldest pending intent 3\d\d s old \(over 60 s\)"
    assert re.fullmatch(old, strict_problems[0]), strict_problems
    assert re.fullmatch(no_token, strict_problems[1]), strict_problems


# -- Redis or WeChat unreachable -----------------------------------------------------------


@pytest.fixture
def inputs(tmp_path: Path, sim: Sim) -> dict[str, str]:
    """Files the commands read: intents, a reconcile list, an accounts file with a component,
    an authorizations export."""
    openid = sim.fans(1)[0]
    intents = tmp_path / "intents.jsonl"
    intents.write_text(json.dumps({"op": "tag", "tag_id": 100, "openid": openid}) + "\n")
    members = tmp_path / "members.txt"
    members.write_text(openid + "\n")
    accounts = tmp_path / "accounts.toml"
    accounts.write_text(
        f'[[accounts]]\nappid = "{APPID}"\nsecret = "env:WECHAT_SECRET"\n\n'
        '[component]\nappid = "wxc0000000000000001"\nsecret = "env:WECHAT_SECRET"\n'
    )
    export = tmp_path / "authorizations.json"
    export.write_text(
        json.dumps(
            {
                "format": "tagsync-authorizations/1",
                "exported_at": 1.0,
                "accounts": [{"appid": "wx3333333333333333", "refresh_token": "r", "added": 1.0}],
            }
        )
    )
    return {
        "openid": openid,
        "intents": str(intents),
        "members": str(members),
        "accounts": str(accounts),
        "export": str(export),
    }


def run_all(
    env: dict[str, str], commands: list[tuple[str, ...]]
) -> list[tuple[tuple[str, ...], subprocess.CompletedProcess[str]]]:
    """Run the commands, four at a time (most of their time is spent waiting)."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda args: tagsync(env, *args, timeout=60), commands))
    return list(zip(commands, results, strict=True))


def one_line_failure(
    args: tuple[str, ...], result: subprocess.CompletedProcess[str], message: str
) -> str | None:
    """What is wrong with how the command failed, or None: exit 2, one line on stderr (a
    JSON log line for `worker`), no traceback, no secret."""
    shown = f"tagsync {' '.join(args)}: exit {result.returncode}, stderr {result.stderr!r}"
    lines = result.stderr.splitlines()
    if result.returncode != 2 or len(lines) != 1:
        return shown
    if "Traceback" in result.stdout + result.stderr or SECRET in result.stdout + result.stderr:
        return shown
    if args[0] == "worker":
        line = json.loads(lines[0])
        ok = line["event"] == "tagsync.exit" and line["exit_code"] == 2
        return None if ok and message in line["error"] else shown
    return None if lines[0].startswith(f"tagsync: {message}") else shown


@pytest.mark.long  # over 10 s: make test-long (CI runs it) keeps make test under 10 min
def test_every_command_meets_an_unreachable_redis_with_one_line_and_exit_2(
    env: dict[str, str], inputs: dict[str, str]
) -> None:
    """TAGSYNC_REDIS_URL at a closed port: every command that needs Redis exits 2 with one
    line on stderr naming Redis, no traceback, no secret; the demo starts a Redis of its own."""
    # Given
    down = {**env, "TAGSYNC_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}
    with_component = {**down, "TAGSYNC_ACCOUNTS": inputs["accounts"]}
    commands: list[tuple[str, ...]] = [
        ("status",),
        ("status", "--json"),
        ("status", "--check"),
        ("status", "--check", "--json"),
        ("tags", "list"),
        ("tags", "list", "--json"),
        ("tags", "fans", "100"),
        ("tags", "create", "x"),
        ("tags", "rename", "100", "y"),
        ("tags", "delete", "100"),
        ("user-tags", inputs["openid"]),
        ("dlq", "list"),
        ("dlq", "list", "--json"),
        ("dlq", "export"),
        ("dlq", "replay"),
        ("dlq", "purge"),
        ("accounts", "list"),
        ("accounts", "remove", "wx3333333333333333"),
        ("accounts", "purge", "wx3333333333333333"),
        ("accounts", "export"),
        ("produce", inputs["intents"]),
        ("reconcile", "--tag", "100", "--from", inputs["members"], "--dry-run"),
        ("quota", "get"),
        ("quota", "reset"),
    ]
    component_commands: list[tuple[str, ...]] = [
        ("accounts", "authorize", "wx3333333333333333", "--refresh-token", "r"),
        ("accounts", "import", inputs["export"]),
        ("component", "ticket", "ticket"),
    ]
    # When
    results = run_all(down, commands) + run_all(with_component, component_commands)
    results.append((("worker",), tagsync(down, "worker", "--processes", "1")))
    # Then
    wrong = [
        problem
        for args, result in results
        if (problem := one_line_failure(args, result, "Redis")) is not None
    ]
    assert wrong == [], "\n".join(wrong)
    # And: the demo, which needs no Redis of the shell's, runs on one of its own
    demo = tagsync(down, "demo", "--duration", "1", "--fans", "50", timeout=120)
    assert demo.returncode == 0, demo.stdout[-2000:] + demo.stderr[-2000:]
    assert "(TAGSYNC_REDIS_URL) does not answer: the demo starts its own" in demo.stdout


def test_status_once_meets_an_unreachable_redis_with_one_line_and_exit_2(
    env: dict[str, str],
) -> None:
    """`tagsync status --once` with Redis unreachable fails like every other command."""
    down = {**env, "TAGSYNC_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}
    result = tagsync(down, "status", "--once")
    assert one_line_failure(("status", "--once"), result, "Redis") is None, result


#: A retry notice an admin command prints while WeChat does not answer (then the failure).
RETRY_NOTICE = re.compile(r"tagsync: [a-z_/]+: .+; retrying in \d+\.\d s")


def test_every_command_meets_an_unreachable_wechat_with_one_line_and_exit_2(
    env: dict[str, str], inputs: dict[str, str]
) -> None:
    """WECHAT_API_BASE at a closed port: every command that calls WeChat exits 2 with one
    line saying WeChat is unreachable, after at most two notices of its retries."""
    # Given
    down = {**env, "WECHAT_API_BASE": f"http://127.0.0.1:{free_port()}"}
    commands: list[tuple[str, ...]] = [
        ("tags", "list"),
        ("tags", "list", "--json"),
        ("tags", "fans", "100"),
        ("tags", "create", "x"),
        ("tags", "rename", "100", "y"),
        ("tags", "delete", "100"),
        ("user-tags", inputs["openid"]),
        ("reconcile", "--tag", "100", "--from", inputs["members"], "--dry-run"),
        ("quota", "get"),
        ("quota", "reset"),
    ]
    # When
    results = run_all(down, commands)
    results.append((("worker",), tagsync(down, "worker", "--processes", "1")))
    # Then: the last line says WeChat is unreachable; any before it are retry notices
    wrong = []
    notices: Counter[int] = Counter()
    for args, result in results:
        *retries, last = result.stderr.splitlines() or [""]
        notices[len(retries)] += 1
        if not all(RETRY_NOTICE.fullmatch(line) for line in retries) or len(retries) > 2:
            wrong.append(f"tagsync {' '.join(args)}: stderr {result.stderr!r}")
            continue
        last_only = subprocess.CompletedProcess(result.args, result.returncode, result.stdout, last)
        message = "WeChat" if args[0] == "worker" else "WeChat unreachable: "
        if (problem := one_line_failure(args, last_only, message)) is not None:
            wrong.append(problem)
        elif SECRET in result.stderr:
            wrong.append(f"tagsync {' '.join(args)}: the secret in stderr")
    print(f"\nretry notices before the failure line: {dict(notices)} (notices: commands)")
    assert wrong == [], "\n".join(wrong)
