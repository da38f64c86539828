"""The simulator's own contract (docs/simulator.md): test endpoints, fans, atomicity,
concurrency, size."""

from __future__ import annotations

import threading

import pytest
import requests

from fakewechat.openids import OPENID_PATTERN, FanDirectory, prefix_for
from tests.helpers import APPID, FANS, Sim, start_simulator
from worker.runtime.processes import stop_process


def test_fans_are_deterministic_28_char_openids_with_the_appid_prefix() -> None:
    """The same AppID and seed give the same openids; all share one prefix of the AppID."""
    a, b = FanDirectory(APPID, count=5), FanDirectory(APPID, count=5)
    assert a.page(0, 5) == b.page(0, 5)
    assert all(
        OPENID_PATTERN.fullmatch(o) and o.startswith(prefix_for(APPID)) for o in a.page(0, 5)
    )
    assert len(set(a.page(0, 5))) == 5
    assert FanDirectory(APPID, seed=1, count=1).page(0, 1) != a.page(0, 1)


def test_fans_listing_is_stable_and_append_only(sim: Sim) -> None:
    """GET /_sim/fans pages a stable order; added fans come after the existing ones."""
    before = sim.get("/_sim/fans", offset=0, limit=FANS + 10_000)
    added = sim.post("/_sim/fans", {"count": 3})["openids"]
    explicit = prefix_for(APPID) + "explicitFanNumber0001"[:22].ljust(22, "x")
    added_explicit = sim.post("/_sim/fans", {"openids": [explicit, explicit]})["openids"]
    after = sim.get("/_sim/fans", offset=0, limit=before["total"] + 10)
    assert after["openids"][: before["total"]] == before["openids"]
    assert after["openids"][before["total"] :] == [*added, explicit]
    assert added_explicit == [explicit]
    assert after["total"] == before["total"] + 4
    assert sim.get("/_sim/fans", offset=1, limit=2)["openids"] == before["openids"][1:3]


def test_foreign_openids_are_well_formed_but_not_fans(sim: Sim) -> None:
    """{"count", "foreign": true} answers openids of another AppID, without adding fans."""
    total = sim.get("/_sim/fans", limit=0)["total"]
    foreign = sim.foreign(3)
    assert all(OPENID_PATTERN.fullmatch(o) and not o.startswith(prefix_for(APPID)) for o in foreign)
    assert sim.get("/_sim/fans", limit=0)["total"] == total


def test_a_failed_batch_applies_nothing(sim: Sim) -> None:
    """One bad openid among 49 good fails the call; none of the 49 is tagged."""
    token = sim.token()
    tag = sim.api("tags/create", {"tag": {"name": "atomic"}}, token=token)["tag"]["id"]
    batch = [*sim.fans(49), sim.foreign(1)[0]]
    answer = sim.api("tags/members/batchtagging", {"tagid": tag, "openid_list": batch}, token=token)
    assert answer["errcode"] == 49003
    assert sim.state()["tags"][str(tag)]["fans"] == []


def test_stats_count_every_call_whatever_its_answer(sim: Sim) -> None:
    """calls, errcodes, batch sizes, token fetches and the busiest second are counted."""
    token = sim.token()
    sim.api("tags/get", token="")
    tag = sim.api("tags/create", {"tag": {"name": "s"}}, token=token)["tag"]["id"]
    sim.api("tags/members/batchtagging", {"tagid": tag, "openid_list": sim.fans(3)}, token=token)
    sim.api("tags/members/batchuntagging", {"tagid": tag, "openid_list": sim.fans(60)}, token=token)
    stats = sim.stats()
    assert stats["calls"] == {
        "stable_token": 1,
        "tags/get": 1,
        "tags/create": 1,
        "tags/members/batchtagging": 1,
        "tags/members/batchuntagging": 1,
    }
    assert stats["errcodes"] == {"0": 3, "41001": 1, "40032": 1}
    assert stats["batch_sizes"] == {"tagging": {"3": 1}, "untagging": {"60": 1}}
    assert stats["token_fetches"] == 1
    assert 1 <= stats["max_calls_in_any_second"] <= 4


def test_config_round_trip_and_validation(sim: Sim) -> None:
    """POST /_sim/config answers the whole config; bad keys and values are refused with 400."""
    config = sim.config(busy_rate=0.25, latency_ms=[1, 2], rate_per_sec=100)
    assert config["busy_rate"] == 0.25 and config["latency_ms"] == [1, 2]
    assert sim.get("/_sim/config") == config
    for bad in ({"busy_rate": 2}, {"nonsense": 1}, {"latency_ms": [5, 1]}, {"daily_quota": -1}):
        response = sim.http.post(f"{sim.url}/_sim/config", json=bad, timeout=5)
        assert response.status_code == 400, bad
    sim.post("/_sim/reset")
    assert sim.get("/_sim/config")["busy_rate"] == 0.0


def test_reset_clears_everything_but_fans(sim: Sim) -> None:
    """/_sim/reset clears tags, tokens, stats and faults; fans stay."""
    token = sim.token()
    sim.api("tags/create", {"tag": {"name": "x"}}, token=token)
    fans = sim.get("/_sim/fans", limit=0)["total"]
    sim.post("/_sim/reset")
    assert sim.state() == {"tags": {}}
    assert sim.stats()["calls"] == {}
    assert sim.api("tags/get", token=token)["errcode"] == 40001
    assert sim.get("/_sim/fans", limit=0)["total"] == fans


def test_concurrent_clients_are_all_applied(sim: Sim) -> None:
    """Eight threads tagging distinct fans at once: every fan is tagged, every call counted."""
    token = sim.token()
    tag = sim.api("tags/create", {"tag": {"name": "busy"}}, token=token)["tag"]["id"]
    fans = sim.fans(8 * 20 * 5)

    def tagger(part: list[str]) -> None:
        http = requests.Session()
        for i in range(0, len(part), 5):
            body = {"tagid": tag, "openid_list": part[i : i + 5]}
            http.post(
                f"{sim.url}/cgi-bin/tags/members/batchtagging",
                params={"access_token": token},
                json=body,
                timeout=10,
            )

    threads = [
        threading.Thread(target=tagger, args=(fans[i * 100 : (i + 1) * 100],)) for i in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(sim.state()["tags"][str(tag)]["fans"]) == sorted(fans)
    assert sim.stats()["batch_sizes"]["tagging"] == {"5": 160}


def test_overlapping_batches_of_one_tag_are_seen(sim: Sim) -> None:
    """Two batch calls of one tag answered at the same time are counted as an overlap."""
    token = sim.token()
    tag = sim.api("tags/create", {"tag": {"name": "o"}}, token=token)["tag"]["id"]
    sim.config(latency_ms=[300, 300])
    threads = [
        threading.Thread(
            target=sim.api,
            args=(
                "tags/members/batchtagging",
                {"tagid": tag, "openid_list": sim.fans(1, offset=i)},
            ),
            kwargs={"token": token},
        )
        for i in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sim.stats()["overlapping_batches"] == 1
    sim.post("/_sim/reset")  # the overlap was made on purpose: not the pipeline's


def test_unknown_paths_and_bad_requests(sim: Sim) -> None:
    """Unknown API paths answer 404; a request line that is not HTTP answers 400."""
    assert sim.api("tags/nonsense")["errcode"] == 404
    import socket

    host, port = sim.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as raw:
        raw.sendall(b"garbage\r\n\r\n")
        assert raw.recv(100).startswith(b"HTTP/1.1 400")


@pytest.mark.slow
def test_a_million_fans() -> None:
    """--fans 1000000 holds a million fans; the last one can be tagged like the first."""
    process, url = start_simulator("--fans", "1000000")
    try:
        sim = Sim(url)
        listing = sim.get("/_sim/fans", offset=999_999, limit=5)
        assert listing["total"] == 1_000_000 and len(listing["openids"]) == 1
        token = sim.token()
        tag = sim.api("tags/create", {"tag": {"name": "m"}}, token=token)["tag"]["id"]
        edges = [*sim.fans(1), listing["openids"][0]]
        answer = sim.api(
            "tags/members/batchtagging", {"tagid": tag, "openid_list": edges}, token=token
        )
        assert answer["errcode"] == 0
        assert sorted(sim.state()["tags"][str(tag)]["fans"]) == sorted(edges)
    finally:
        stop_process(process)
