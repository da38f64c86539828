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
from tests.conftest import (
    APPID,
    Sim,
    batch_calls,
    ensure_fans,
    fans_of,
    make_tags,
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


def run_with_fault(
    *,
    sim: Sim,
    client: WeChatClient,
    start_worker: Any,
    env: dict[str, str],
    connection: redis.Redis,
    fault: Callable[[], float | None],
    seconds_before: float = 2.0,
    seconds_after: float = 2.0,
) -> tuple[Stream, list[int], float | None]:
    """Stream intents, run ``fault`` (which returns when the fault ended), stream on, drain."""
    tags = make_tags(client, 6, prefix="chaos")
    fans = ensure_fans(sim, 600)
    start_worker(processes=2, threads=4, **env)
    stream = Stream(tags, fans).start()
    time.sleep(seconds_before)
    ended = fault()
    time.sleep(seconds_after)
    stream.stop()
    wait_drained(connection, timeout_s=180)
    return stream, tags, ended


@pytest.mark.parametrize(
    "outage_s", [pytest.param(2.0, id="2s"), pytest.param(8.0, id="8s", marks=pytest.mark.chaos)]
)
def test_redis_killed_and_restarted_loses_nothing(
    sim: Sim,
    client: WeChatClient,
    chaos_env: dict[str, str],
    durable_redis: RedisServer,
    start_worker: Any,  # after Redis: its workers stop first at teardown
    outage_s: float,
) -> None:
    """Redis kill -9 mid-stream, back from its AOF after the outage: every accepted intent
    lands, nothing is dead-lettered, and calls resume within 2 s of Redis answering."""
    connection = redis.Redis.from_url(durable_redis.url)

    def crash() -> float:
        durable_redis.kill()
        time.sleep(outage_s)
        durable_redis.start()
        return time.time()

    stream, tags, back = run_with_fault(
        sim=sim, client=client, start_worker=start_worker, env=chaos_env,
        connection=connection, fault=crash, seconds_after=4.0,
    )  # fmt: skip
    assert back is not None
    check_converged(sim, tags, stream)
    assert DeadLetters(connection).count() == 0
    assert stream.refused > 0  # the outage was real: producers saw it
    resumed = first_call_after(sim, back)
    assert resumed <= 2.0, f"calls resumed {resumed:.1f}s after Redis came back"
    report(
        "Redis kill -9, restart from AOF (appendfsync always)",
        f"{outage_s:g} s outage",
        stream,
        sim,
        resumed,
    )


@pytest.mark.parametrize(
    "stall_s", [pytest.param(3.0, id="3s"), pytest.param(12.0, id="12s", marks=pytest.mark.chaos)]
)
def test_redis_stalled_loses_nothing(
    sim: Sim,
    client: WeChatClient,
    chaos_env: dict[str, str],
    durable_redis: RedisServer,
    start_worker: Any,  # after Redis: its workers stop first at teardown
    stall_s: float,
) -> None:
    """Redis stops answering (SIGSTOP) with connections open, past the 10 s command timeout in
    the long version, then goes on: nothing lost, calls resume within 2 s."""
    connection = redis.Redis.from_url(durable_redis.url)

    def stall() -> float:
        durable_redis.freeze()
        time.sleep(stall_s)
        durable_redis.thaw()
        return time.time()

    stream, tags, back = run_with_fault(
        sim=sim, client=client, start_worker=start_worker, env=chaos_env,
        connection=connection, fault=stall, seconds_after=4.0,
    )  # fmt: skip
    assert back is not None
    check_converged(sim, tags, stream)
    assert DeadLetters(connection).count() == 0
    resumed = first_call_after(sim, back)
    assert resumed <= 2.0, f"calls resumed {resumed:.1f}s after Redis went on"
    report("Redis stalled (SIGSTOP), then SIGCONT", f"{stall_s:g} s", stream, sim, resumed)


@pytest.mark.parametrize(
    "kills",
    [
        pytest.param(2, id="2", marks=pytest.mark.long),  # about 20 s: make test-long
        pytest.param(6, id="6", marks=pytest.mark.chaos),
    ],
)
def test_worker_kill_storm_loses_nothing(
    sim: Sim,
    client: WeChatClient,
    chaos_env: dict[str, str],
    durable_redis: RedisServer,
    start_worker: Any,  # after Redis: its workers stop first at teardown
    kills: int,
) -> None:
    """Every worker process kill -9'd again and again mid-stream: the final state is right."""
    connection = redis.Redis.from_url(durable_redis.url)
    sim.config(latency_ms=[5, 30])
    groups: list[Any] = []

    def storm() -> float:
        for _ in range(kills):
            time.sleep(1.5)
            groups[-1].kill()
            groups.append(start_worker(processes=2, threads=4, **chaos_env))
        return time.time()

    tags = make_tags(client, 6, prefix="storm")
    fans = ensure_fans(sim, 600)
    groups.append(start_worker(processes=2, threads=4, **chaos_env))
    stream = Stream(tags, fans).start()
    time.sleep(1.0)
    restarted = storm()
    time.sleep(1.0)
    stream.stop()
    wait_drained(connection, timeout_s=240)
    check_converged(sim, tags, stream)
    assert DeadLetters(connection).count() == 0
    report(
        "worker processes kill -9",
        f"{kills} kills, 1.5 s apart",
        stream,
        sim,
        first_call_after(sim, restarted),
    )


@pytest.mark.parametrize(
    "seconds", [pytest.param(3.0, id="3s"), pytest.param(15.0, id="15s", marks=pytest.mark.chaos)]
)
def test_system_busy_storm_then_recovery(
    sim: Sim,
    client: WeChatClient,
    chaos_env: dict[str, str],
    durable_redis: RedisServer,
    start_worker: Any,  # after Redis: its workers stop first at teardown
    seconds: float,
) -> None:
    """WeChat answers -1 to 95% of calls for a while, then recovers: nothing lost, nothing
    dead-lettered (attempts were not used up)."""
    connection = redis.Redis.from_url(durable_redis.url)

    def storm() -> float:
        sim.config(busy_rate=0.95)
        time.sleep(seconds)
        sim.config(busy_rate=0.0)
        return time.time()

    # Backoff capped at 1 s retries a batch ~20 times in a 15 s storm; the attempts must
    # outlast it (in production the backoff grows to 5 minutes: 30 attempts take hours).
    env = {**chaos_env, "TAGSYNC_BACKOFF_MAX_MS": "1000", "TAGSYNC_MAX_ATTEMPTS": "200"}
    stream, tags, ended = run_with_fault(
        sim=sim,
        client=client,
        start_worker=start_worker,
        env=env,
        connection=connection,
        fault=storm,
    )
    check_converged(sim, tags, stream)
    assert DeadLetters(connection).count() == 0
    assert sim.stats()["errcodes"].get("-1", 0) > 0
    assert ended is not None
    report(
        "-1 (system busy) for 95% of calls",
        f"{seconds:g} s",
        stream,
        sim,
        first_call_after(sim, ended),
    )


@pytest.mark.parametrize(
    "rounds", [pytest.param(4, id="4"), pytest.param(20, id="20", marks=pytest.mark.chaos)]
)
def test_token_expiry_churn(
    sim: Sim,
    client: WeChatClient,
    chaos_env: dict[str, str],
    durable_redis: RedisServer,
    start_worker: Any,  # after Redis: its workers stop first at teardown
    rounds: int,
) -> None:
    """Every issued token expires every half second for a while: nothing lost or dead-lettered."""
    connection = redis.Redis.from_url(durable_redis.url)

    def churn() -> float:
        for _ in range(rounds):
            sim.post("/_sim/expire_tokens")
            time.sleep(0.5)
        return time.time()

    stream, tags, _ = run_with_fault(
        sim=sim,
        client=client,
        start_worker=start_worker,
        env=chaos_env,
        connection=connection,
        fault=churn,
    )
    check_converged(sim, tags, stream)
    assert DeadLetters(connection).count() == 0
    assert sim.stats()["errcodes"].get("42001", 0) > 0
    report("access tokens expired", f"every 0.5 s, {rounds} times", stream, sim, None)


@pytest.mark.parametrize(
    "seconds", [pytest.param(3.0, id="3s"), pytest.param(15.0, id="15s", marks=pytest.mark.chaos)]
)
def test_http_500s_and_lost_answers(
    sim: Sim,
    client: WeChatClient,
    chaos_env: dict[str, str],
    durable_redis: RedisServer,
    start_worker: Any,  # after Redis: its workers stop first at teardown
    seconds: float,
) -> None:
    """HTTP 500 for 20% of calls, 5% of answers lost after the call was carried out, and
    garbled bodies: retried until applied, nothing dead-lettered."""
    connection = redis.Redis.from_url(durable_redis.url)

    def faults() -> float:
        sim.config(http500_rate=0.2, timeout_rate=0.05, timeout_hang_s=3.0, malformed_rate=0.05)
        time.sleep(seconds)
        sim.config(http500_rate=0.0, timeout_rate=0.0, malformed_rate=0.0)
        return time.time()

    # Backoff capped at 1 s retries a batch ~20 times in a 15 s storm; the attempts must
    # outlast it (in production the backoff grows to 5 minutes: 30 attempts take hours).
    env = {**chaos_env, "TAGSYNC_BACKOFF_MAX_MS": "1000", "TAGSYNC_MAX_ATTEMPTS": "200"}
    stream, tags, ended = run_with_fault(
        sim=sim,
        client=client,
        start_worker=start_worker,
        env=env,
        connection=connection,
        fault=faults,
    )
    check_converged(sim, tags, stream)
    assert DeadLetters(connection).count() == 0
    assert sim.stats()["errcodes"].get("500", 0) > 0
    assert ended is not None
    report(
        "HTTP 500 20%, lost answers 5%, garbled 5%",
        f"{seconds:g} s",
        stream,
        sim,
        first_call_after(sim, ended),
    )


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
