"""Shared access tokens: one fetch however many processes race, one refresh per expiry."""

from __future__ import annotations

import multiprocessing
import threading
import time
from typing import Any

import pytest
import redis

from tests.helpers import APPID, SECRET, Sim, wait_until
from worker.wechat import MemoryTokenStore, RedisTokenStore, WeChatClient

PROCESSES = 6


def _racer(
    api_base: str, secret: str, redis_url: str, mode: str, barrier: Any, rounds: int, out: Any
) -> None:
    """One worker-like process: wait for the others, then call the API ``rounds`` times."""
    shared = redis.Redis.from_url(redis_url)
    try:
        with WeChatClient(
            appid=APPID,
            secret=secret,
            api_base=api_base,
            token_mode=mode,  # type: ignore[arg-type]
            token_store=RedisTokenStore(shared, APPID),
        ) as client:
            for _ in range(rounds):
                barrier.wait(timeout=30)
                client.list_tags()
                out.put(client.tokens.fetches)
                # The test expires the tokens between rounds.
                barrier.wait(timeout=30)
    except BaseException:
        barrier.abort()  # fail the test at once instead of at the barrier's timeout
        raise


def _race(sim: Sim, redis_url: str, mode: str, rounds: int, between: Any = None) -> list[int]:
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(PROCESSES + 1)
    out = ctx.Queue()
    processes = [
        ctx.Process(target=_racer, args=(sim.url, SECRET, redis_url, mode, barrier, rounds, out))
        for _ in range(PROCESSES)
    ]
    for process in processes:
        process.start()
    try:
        fetched: list[int] = []
        for _ in range(rounds):
            barrier.wait(timeout=60)  # all processes start their call at once
            barrier.wait(timeout=60)  # all calls done
            fetched.extend(out.get(timeout=10) for _ in range(PROCESSES))
            if between is not None:
                between()
        return fetched
    finally:
        for process in processes:
            process.join(timeout=30)
            if process.is_alive():
                process.kill()
        assert all(p.exitcode == 0 for p in processes), [p.exitcode for p in processes]


@pytest.mark.processes  # six of them
@pytest.mark.parametrize("mode", ["stable", "classic"])
def test_racing_processes_fetch_one_token(sim: Sim, redis_url: str, mode: str) -> None:
    """Six processes needing a token at the same instant cause exactly one fetch."""
    # When
    _race(sim, redis_url, mode, rounds=1)
    # Then
    stats = sim.stats()
    assert stats["token_fetches"] == 1
    assert stats["calls"]["tags/get"] == PROCESSES
    assert stats["errcodes"] == {"0": PROCESSES + 1}


@pytest.mark.processes  # six of them
@pytest.mark.parametrize("mode", ["stable", "classic"])
def test_one_refresh_per_expiry_across_processes(sim: Sim, redis_url: str, mode: str) -> None:
    """After each /_sim/expire_tokens the processes refresh once between them; calls succeed."""
    # Given: three rounds of calls with every token expired between rounds
    rounds = 3
    # When
    _race(sim, redis_url, mode, rounds=rounds, between=lambda: sim.post("/_sim/expire_tokens"))
    # Then: one fetch at start and one per expiry; every call succeeded in the end
    stats = sim.stats()
    assert stats["token_fetches"] == rounds
    assert stats["errcodes"].get("0", 0) == PROCESSES * rounds + rounds
    # A process that looks after the refresh never meets the expired token.
    assert rounds - 1 <= stats["errcodes"]["42001"] <= PROCESSES * (rounds - 1)


def test_threads_of_one_process_fetch_one_token(sim: Sim) -> None:
    """Without Redis, the in-process store gives the same single flight to threads."""
    # Given
    store = MemoryTokenStore()
    clients = [
        WeChatClient(appid=APPID, secret=SECRET, api_base=sim.url, token_store=store)
        for _ in range(8)
    ]
    start = threading.Barrier(len(clients))

    def call(client: WeChatClient) -> None:
        start.wait()
        client.list_tags()

    # When
    threads = [threading.Thread(target=call, args=(c,)) for c in clients]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # Then
    assert sim.stats()["token_fetches"] == 1
    assert sim.stats()["calls"]["tags/get"] == 8


def test_token_is_refreshed_before_it_expires(sim: Sim, redis_client: redis.Redis) -> None:
    """A token near its end is replaced ahead of time: no call ever meets 42001."""
    # Given: tokens that live 4 seconds
    sim.config(token_ttl_s=4)
    with WeChatClient(
        appid=APPID,
        secret=SECRET,
        api_base=sim.url,
        token_store=RedisTokenStore(redis_client, APPID),
    ) as client:
        # When: calls keep coming past the first token's lifetime
        deadline = time.monotonic() + 6
        while time.monotonic() < deadline:
            client.list_tags()
            time.sleep(0.1)
    # Then
    stats = sim.stats()
    assert stats["token_fetches"] >= 2
    assert "42001" not in stats["errcodes"]


def test_stale_failure_report_keeps_the_new_token(sim: Sim, redis_client: redis.Redis) -> None:
    """Invalidating a token that was already replaced leaves the new one in place."""
    # Given
    store = RedisTokenStore(redis_client, APPID)
    with WeChatClient(appid=APPID, secret=SECRET, api_base=sim.url, token_store=store) as client:
        old = client.tokens.token()
        client.tokens.invalidate(old)  # WeChat rejected it here
        new = client.tokens.token()
        # When: a slow process reports the old token's failure late
        assert store.invalidate(old) is False
        # Then
        assert client.tokens.token() == new != old
    # stable_token first handed the rejected token back; the forced refresh replaced it.
    assert sim.stats()["token_fetches"] == 3


def test_a_token_another_process_refreshed_is_used_within_seconds(
    sim: Sim, redis_client: redis.Redis
) -> None:
    """A process reads the shared token from Redis at most every LOCAL_TTL_S (not on every
    call): a token another process refreshed is taken up within that, and one WeChat
    rejects is dropped at once."""
    from worker.wechat.tokens import LOCAL_TTL_S

    # Given: two processes' clients sharing the token in Redis
    def process() -> WeChatClient:
        store = RedisTokenStore(redis_client, APPID)
        return WeChatClient(appid=APPID, secret=SECRET, api_base=sim.url, token_store=store)

    with process() as here, process() as there:
        old = here.tokens.token()
        assert there.tokens.token() == old
        reads_before = redis_client.info("commandstats").get("cmdstat_hmget", {}).get("calls", 0)
        for _ in range(50):
            here.tokens.token()
        reads = redis_client.info("commandstats").get("cmdstat_hmget", {}).get("calls", 0)
        assert reads == reads_before  # 50 calls, no round trip
        # When: the other process finds its token rejected and refreshes it
        there.tokens.invalidate(old)
        new = there.tokens.token()
        assert new != old
        # Then: this process moves to it within LOCAL_TTL_S
        started = time.monotonic()
        wait_until(lambda: here.tokens.token() == new, timeout_s=LOCAL_TTL_S + 2)
        assert time.monotonic() - started <= LOCAL_TTL_S + 1
