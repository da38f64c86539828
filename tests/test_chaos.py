"""The reliability suite: faults a production deployment meets, under a steady stream.

Each scenario runs real worker processes against the simulator while an application sends
one intent per producer call, injects one kind of fault, and then checks the simulator's
final state against the last-write-wins oracle of every accepted intent (a producer call
that returned), and that the dead letters hold exactly what they must. The short versions
run in ``make test``; ``make chaos`` runs the long ones (``pytest -m chaos``). With
``CHAOS_REPORT=FILE`` each scenario appends its figures to FILE (JSON lines), which the
table of docs/reliability.md is made from.
"""

from __future__ import annotations

import json
import math
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import pytest
import redis

import producers
from tests.helpers import (
    APPID,
    Sim,
    batch_calls,
    ensure_fans,
    fans_of,
    limit_rate_from_next_second,
    make_tags,
    queued_backlog,
    wait_drained,
    wait_until,
)
from worker.dead_letters import DeadLetters
from worker.runtime.redis_server import RedisServer
from worker.wechat import WeChatClient

pytestmark = pytest.mark.slow

Event = tuple[int, str, str, float]


@dataclass
class Stream:
    """An application sending one intent per producer call, remembering what was accepted."""

    tags: list[int]
    fans: list[str]
    per_second: float = 150.0
    seed: int = 1
    accepted: list[Event] = field(default_factory=list)
    #: Calls that raised: not accepted, yet maybe enqueued (the answer was lost in a crash).
    unsure: list[Event] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Stream:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        rng = random.Random(self.seed)
        while not self._stop.is_set():
            event = (
                rng.choice(self.tags),
                rng.choice(self.fans),
                rng.choice(["tag", "tag", "untag"]),
                time.time(),
            )
            tag, openid, op, ts = event
            try:
                producers.send(
                    [{"op": op, "tag_id": tag, "openid": openid, "ts": ts, "account": APPID}]
                )
            except (redis.RedisError, OSError):
                self.unsure.append(event)  # not accepted: the application would retry it
                time.sleep(0.05)
                continue
            self.accepted.append(event)
            time.sleep(1 / self.per_second)

    @property
    def refused(self) -> int:
        """Producer calls that raised."""
        return len(self.unsure)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)


def minimum_calls(events: list[Event]) -> int:
    """Calls if every intent had been merged before any batch left."""
    latest: dict[tuple[int, str], tuple[float, str]] = {}
    for tag, openid, op, ts in events:
        if (tag, openid) not in latest or ts >= latest[(tag, openid)][0]:
            latest[(tag, openid)] = (ts, op)
    per: dict[tuple[int, str], int] = {}
    for (tag, _), (_, op) in latest.items():
        per[(tag, op)] = per.get((tag, op), 0) + 1
    return sum(math.ceil(n / 50) for n in per.values())


def report(
    fault: str, size: str, stream: Stream, sim: Sim, recover_s: float | None, *, lost: int = 0
) -> None:
    """Append the scenario's figures to $CHAOS_REPORT, if set."""
    path = os.environ.get("CHAOS_REPORT")
    if not path:
        return
    row = {
        "fault": fault,
        "size": size,
        "accepted": len(stream.accepted),
        "lost": lost,  # 0 unless a scenario measures a setting that can lose
        "recover_s": None if recover_s is None else round(recover_s, 2),
        "calls": batch_calls(sim),
        "minimum_calls": minimum_calls(stream.accepted),
    }
    with open(path, "a", encoding="utf-8") as out:
        out.write(json.dumps(row) + "\n")


def wrong_pairs(sim: Sim, tags: list[int], stream: Stream) -> list[tuple[int, str]]:
    """(tag, fan) pairs whose final state no history of the accepted intents explains.

    A producer call that raised may still have been enqueued: Redis carried it out and
    crashed before answering. So a pair may also end as an unsure intent newer than its
    last accepted one says; anything else is a lost intent.
    """
    latest: dict[tuple[int, str], tuple[float, str]] = {}
    for tag, openid, op, ts in stream.accepted:
        if (tag, openid) not in latest or ts >= latest[(tag, openid)][0]:
            latest[(tag, openid)] = (ts, op)
    allowed: dict[tuple[int, str], set[str]] = {k: {op} for k, (_, op) in latest.items()}
    for tag, openid, op, ts in stream.unsure:
        before = latest.get((tag, openid))
        if before is None or ts >= before[0]:
            allowed.setdefault((tag, openid), {"untag"} if before is None else set()).add(op)
    wrong = []
    for tag in tags:
        members = fans_of(sim, tag)
        for (pair_tag, openid), ops in allowed.items():
            if pair_tag == tag and ("tag" if openid in members else "untag") not in ops:
                wrong.append((tag, openid))
        known = {openid for (pair_tag, openid) in allowed if pair_tag == tag}
        wrong += [(tag, openid) for openid in members - known]  # tagged by no intent at all
    return wrong


def check_converged(sim: Sim, tags: list[int], stream: Stream) -> None:
    """The simulator holds the last-write-wins state of every accepted intent."""
    wrong = wrong_pairs(sim, tags, stream)
    assert not wrong, f"{len(wrong)} pairs wrong, e.g. {wrong[:3]} ({stream.refused} unsure)"


def first_call_after(sim: Sim, moment: float) -> float:
    """Seconds from ``moment`` to the first batch call WeChat answered with 0 after it."""
    calls = [float(c["at"]) for c in sim.log() if c["at"] >= moment and c["errcode"] == "0"]
    assert calls, "no call after the fault"
    return min(calls) - moment


@pytest.fixture
def chaos_env(worker_env: dict[str, str], durable_redis: RedisServer) -> Iterator[dict[str, str]]:
    """The worker environment on the durable Redis; producers point at it too."""
    producers.configure(redis_url=durable_redis.url)
    yield {**worker_env, "TAGSYNC_REDIS_URL": durable_redis.url, "TAGSYNC_RATE": "200"}
    producers.configure(None)


@dataclass
class Faults:
    """What a scenario's fault reaches: Redis, WeChat, and the worker process groups."""

    redis: RedisServer
    sim: Sim
    env: dict[str, str]
    start_worker: Any
    groups: list[Any]


@dataclass(frozen=True)
class Scenario:
    """One kind of fault: how it is made (``fault`` returns when it ended), its short size
    (``make test``) and long one (``make chaos``), and what it must leave behind."""

    name: str
    #: The fault and its size, as docs/reliability.md's table shows them.
    title: str
    detail: Callable[[float], str]
    fault: Callable[[Faults, float], float]
    short: float
    long: float
    env: dict[str, str] = field(default_factory=dict)
    sim_config: dict[str, Any] = field(default_factory=dict)
    seconds_before: float = 2.0
    seconds_after: float = 2.0
    #: Calls resume within this many seconds of the fault's end (None: not measured).
    resume_within_s: float | None = None
    #: An errcode WeChat must have answered (the fault was real), if any.
    errcode: str | None = None
    #: Producers must have seen the fault (calls that raised).
    producers_refused: bool = False
    #: The time to the first call after the fault is reported (not for a fault that
    #: leaves calls going, like expiring tokens).
    report_resume: bool = True
    #: The short size runs in make test-long instead of make test.
    short_is_long: bool = False


def redis_killed(faults: Faults, outage_s: float) -> float:
    faults.redis.kill()
    time.sleep(outage_s)
    faults.redis.start()
    return time.time()


def redis_stalled(faults: Faults, stall_s: float) -> float:
    faults.redis.freeze()
    time.sleep(stall_s)
    faults.redis.thaw()
    return time.time()


def worker_kill_storm(faults: Faults, kills: float) -> float:
    for _ in range(int(kills)):
        time.sleep(1.5)
        faults.groups[-1].kill()
        faults.groups.append(faults.start_worker(processes=2, threads=4, **faults.env))
    return time.time()


def busy_storm(faults: Faults, seconds: float) -> float:
    faults.sim.config(busy_rate=0.95)
    time.sleep(seconds)
    faults.sim.config(busy_rate=0.0)
    return time.time()


def token_churn(faults: Faults, rounds: float) -> float:
    for _ in range(int(rounds)):
        faults.sim.post("/_sim/expire_tokens")
        time.sleep(0.5)
    return time.time()


def http_faults(faults: Faults, seconds: float) -> float:
    faults.sim.config(http500_rate=0.2, timeout_rate=0.05, timeout_hang_s=3.0, malformed_rate=0.05)
    time.sleep(seconds)
    faults.sim.config(http500_rate=0.0, timeout_rate=0.0, malformed_rate=0.0)
    return time.time()


#: Backoff capped at 1 s retries a batch ~20 times in a 15 s storm; the attempts must outlast
#: it (in production the backoff grows to 5 minutes: 30 attempts take hours).
MANY_ATTEMPTS = {"TAGSYNC_BACKOFF_MAX_MS": "1000", "TAGSYNC_MAX_ATTEMPTS": "200"}

SCENARIOS = [
    Scenario(
        "redis_killed",
        "Redis kill -9, restart from AOF (appendfsync always)",
        lambda s: f"{s:g} s outage",
        redis_killed,
        short=2.0,
        long=8.0,
        seconds_after=4.0,
        resume_within_s=2.0,
        producers_refused=True,
    ),
    Scenario(
        "redis_stalled",  # past the 10 s command timeout in the long version
        "Redis stalled (SIGSTOP), then SIGCONT",
        lambda s: f"{s:g} s",
        redis_stalled,
        short=3.0,
        long=12.0,
        seconds_after=4.0,
        resume_within_s=2.0,
        short_is_long=True,  # about 10 s; make test keeps redis_killed's short size
    ),
    Scenario(
        "worker_kill_storm",
        "worker processes kill -9",
        lambda k: f"{k:g} kills, 1.5 s apart",
        worker_kill_storm,
        short=2,
        long=6,
        sim_config={"latency_ms": [5, 30]},
        seconds_before=1.0,
        seconds_after=1.0,
        short_is_long=True,  # about 20 s
    ),
    Scenario(
        "busy_storm",
        "-1 (system busy) for 95% of calls",
        lambda s: f"{s:g} s",
        busy_storm,
        short=3.0,
        long=15.0,
        env=MANY_ATTEMPTS,
        errcode="-1",
        short_is_long=True,  # about 8 s: make test keeps redis_killed's short size
    ),
    Scenario(
        "token_churn",
        "access tokens expired",
        lambda r: f"every 0.5 s, {r:g} times",
        token_churn,
        short=4,
        long=20,
        errcode="42001",
        report_resume=False,
        short_is_long=True,  # about 7 s: make test keeps redis_killed's short size
    ),
    Scenario(
        "http_faults",  # lost answers: carried out, answer never seen
        "HTTP 500 20%, lost answers 5%, garbled 5%",
        lambda s: f"{s:g} s",
        http_faults,
        short=3.0,
        long=15.0,
        env=MANY_ATTEMPTS,
        errcode="500",
        short_is_long=True,  # about 8 s: make test keeps redis_killed's short size
    ),
]


def sizes() -> list[Any]:
    """Each scenario at its short size (make test, or make test-long) and its long one."""
    params = []
    for scenario in SCENARIOS:
        short_marks = [pytest.mark.long] if scenario.short_is_long else []
        params.append(
            pytest.param(scenario, scenario.short, id=f"{scenario.name}-short", marks=short_marks)
        )
        params.append(
            pytest.param(
                scenario, scenario.long, id=f"{scenario.name}-long", marks=pytest.mark.chaos
            )
        )
    return params


def test_a_low_rate_account_loses_nothing_to_a_redis_kill(
    sim: Sim,
    client: WeChatClient,
    durable_redis: RedisServer,
    chaos_env: dict[str, str],
    start_worker: Any,
) -> None:
    """At 3 calls/s the flushes waiting for their slots run on the workers' own threads, off
    the queue: Redis killed for 2 s mid-run (appendfsync always) costs none of them. Every
    intent lands, no 45011, and the rate holds across two processes."""
    # Given: 3 tags x 300 fans = 18 batches at 3 calls/s (6 s of calls), two processes
    tags, fans = queued_backlog(sim, client, tags=3, fans=300, prefix="lowkill")
    limit_rate_from_next_second(sim, 3)
    start_worker(processes=2, threads=4, **{**chaos_env, "TAGSYNC_RATE": "3"})
    wait_until(lambda: batch_calls(sim) >= 4, timeout_s=20, what="4 batch calls")
    # When: Redis is killed mid-run and comes back 2 s later
    durable_redis.kill()
    time.sleep(2)
    durable_redis.start()
    state = redis.Redis.from_url(durable_redis.url)
    try:
        wait_drained(state, timeout_s=90)
    finally:
        state.close()
    # Then
    assert all(fans_of(sim, t) == set(fans) for t in tags)
    stats = sim.stats()
    assert "45011" not in stats["errcodes"], stats["errcodes"]
    assert stats["max_calls_in_any_second"] <= 3


@pytest.mark.parametrize(("scenario", "size"), sizes())
def test_a_fault_mid_stream_loses_nothing(
    sim: Sim,
    client: WeChatClient,
    chaos_env: dict[str, str],
    durable_redis: RedisServer,
    start_worker: Any,  # after Redis: its workers stop first at teardown
    scenario: Scenario,
    size: float,
) -> None:
    """Under a steady stream, one fault (Redis killed or stalled, workers killed, WeChat
    busy, tokens expiring, HTTP 500s and lost answers), then recovery: every accepted intent
    lands, nothing is dead-lettered, and calls resume promptly once the fault ends."""
    # Given: workers applying a stream of intents
    connection = redis.Redis.from_url(durable_redis.url)
    env = {**chaos_env, **scenario.env}
    if scenario.sim_config:
        sim.config(**scenario.sim_config)
    tags = make_tags(client, 6, prefix="chaos")
    fans = ensure_fans(sim, 600)
    faults = Faults(durable_redis, sim, env, start_worker, [])
    faults.groups.append(start_worker(processes=2, threads=4, **env))
    stream = Stream(tags, fans).start()
    time.sleep(scenario.seconds_before)
    # When: the fault, then more of the stream
    ended = scenario.fault(faults, size)
    time.sleep(scenario.seconds_after)
    stream.stop()
    wait_drained(connection, timeout_s=240)
    # Then
    check_converged(sim, tags, stream)
    assert DeadLetters(connection).count() == 0
    if scenario.errcode is not None:
        assert sim.stats()["errcodes"].get(scenario.errcode, 0) > 0
    if scenario.producers_refused:
        assert stream.refused > 0  # the outage was real: producers saw it
    resumed = first_call_after(sim, ended) if scenario.report_resume else None
    if scenario.resume_within_s is not None:
        assert resumed is not None and resumed <= scenario.resume_within_s, (
            f"calls resumed {resumed}s after the fault ended"
        )
    report(scenario.title, scenario.detail(size), stream, sim, resumed)


def test_fuzzed_queue_rows_are_dead_lettered_and_the_rest_applied(
    sim: Sim,
    client: WeChatClient,
    chaos_env: dict[str, str],
    durable_redis: RedisServer,
    start_worker: Any,  # after Redis: its workers stop first at teardown
) -> None:
    """Malformed rows written straight to the queue (past the producers' checks) are
    dead-lettered as invalid_intent, one each; the valid stream around them is applied."""
    from dramatiq import Message

    from producers._queue import broker as queue_broker

    connection = redis.Redis.from_url(durable_redis.url)
    rng = random.Random(5)
    junk: list[Any] = [
        None, "tag", 7, [], ["tag"], ["tag", -1, "o", 1.0, APPID],
        ["untag", 1, "bad openid", 1.0, APPID],
        ["tag", 1, "o" * 65, 1.0, APPID], ["tag", True, "o", 1.0, APPID], {"op": "tag"},
        ["tag", 1, "o", float("nan"), APPID], ["tag", 2**40, "o", 1.0, APPID],
    ]  # fmt: skip

    def fuzz() -> None:
        broker = queue_broker()
        for row in junk:
            rows = [row, ["tag", rng.choice(tags), rng.choice(fans), time.time(), APPID]]
            broker.enqueue(
                Message(
                    queue_name="tagsync.intents",
                    actor_name="ingest",
                    args=(rows,),
                    kwargs={},
                    options={},
                )
            )
            stream.accepted.append((rows[1][1], rows[1][2], "tag", rows[1][3]))

    tags = make_tags(client, 4, prefix="fuzz")
    fans = ensure_fans(sim, 300)
    start_worker(processes=2, threads=4, **chaos_env)
    stream = Stream(tags, fans).start()
    time.sleep(1.0)
    fuzz()
    time.sleep(1.0)
    stream.stop()
    wait_drained(connection, timeout_s=120)
    check_converged(sim, tags, stream)
    letters = [letter for _, letter in DeadLetters(connection).scan()]
    assert len(letters) == len(junk) and {d.reason for d in letters} == {"invalid_intent"}
    report("malformed queue rows", f"{len(junk)} rows", stream, sim, None)


@pytest.mark.chaos
@pytest.mark.parametrize("setting", ["always", "everysec", "no", "none"])
def test_what_each_persistence_setting_loses_to_a_redis_kill(
    sim: Sim, client: WeChatClient, worker_env: dict[str, str], start_worker: Any, setting: str
) -> None:
    """Redis kill -9 mid-stream, 2 s outage, under each `appendfsync` setting and without
    persistence: the (tag, fan) pairs whose final state is wrong, for docs/reliability.md.

    A killed process loses nothing its kernel already holds: Redis writes the AOF before it
    answers, so `always`, `everysec` and `no` lose nothing here; only a power loss or a
    kernel crash loses the writes not yet fsynced (up to 1 s with everysec, ~30 s with no).
    Without persistence the restart loses every pending and queued intent.
    """
    fsync: dict[str, Literal["always", "everysec", "no"]] = {
        "always": "always", "everysec": "everysec", "no": "no", "none": "no",
    }  # fmt: skip
    server = RedisServer(appendonly=setting != "none", appendfsync=fsync[setting])
    server.start()
    producers.configure(redis_url=server.url)
    env = {**worker_env, "TAGSYNC_REDIS_URL": server.url, "TAGSYNC_RATE": "40"}
    workers = start_worker(processes=2, threads=4, **env)
    try:
        tags = make_tags(client, 6, prefix=f"persist{setting}")
        fans = ensure_fans(sim, 600)
        stream = Stream(tags, fans, per_second=300).start()
        time.sleep(3.0)
        server.kill()
        time.sleep(2.0)
        server.start()
        time.sleep(3.0)
        stream.stop()
        connection = redis.Redis.from_url(server.url)
        if setting == "none":
            # Nothing tells the workers what was lost: wait until they are idle.
            wait_until(lambda: backlog_of(connection) == 0, timeout_s=120)
        else:
            wait_drained(connection, timeout_s=180)
        wrong = len(wrong_pairs(sim, tags, stream))
        fault = "Redis kill -9, " + (
            "no persistence" if setting == "none" else f"appendfsync {setting}"
        )
        report(fault, "2 s outage", stream, sim, None, lost=wrong)
        if setting == "none":
            assert wrong > 0  # the warning of docs/reliability.md holds
        else:
            assert wrong == 0
    finally:
        workers.stop()  # before its Redis goes: a worker waits out a Redis outage
        producers.configure(None)
        server.stop()


def backlog_of(connection: redis.Redis) -> int:
    """Intents pending or in flight in the pending buffers (without the queue)."""
    from worker.pending import PendingStore

    return sum(t.unsettled for t in PendingStore(connection).status())
