"""Reconcile: the sorted diff in bounded memory, and `tagsync reconcile` end to end."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from producers.intents import QUEUE_NAME
from tests.helpers import APPID, Sim, fans_of, start_simulator, tagsync, wait_drained
from worker.admin.sorted_diff import BadLines, Diff, SortedRuns, read_desired
from worker.runtime.processes import stop_process

#: Fans of this module's simulator: 50,000 on the tag, 5,000 more to add to it.
FANS = 55_000
#: The queue intents travel on, as Redis keys.
QUEUE = f"dramatiq:{QUEUE_NAME}"


@pytest.fixture(scope="module")
def simulator_process() -> Iterator[str]:
    """A simulator of its own with 55,000 fans (the session's has 2,000, and other
    modules count on that)."""
    process, url = start_simulator("--fans", str(FANS))
    yield url
    stop_process(process)


def make_tag(sim: Sim, name: str, members: list[str] | None = None) -> int:
    """A new tag carried by ``members`` (set up in bulk, not through batch calls)."""
    tag_id = int(sim.api("tags/create", {"tag": {"name": name}})["tag"]["id"])
    if members:
        sim.post("/_sim/members", {"tagid": tag_id, "openids": members})
    return tag_id


def queued_rows(queue: redis.Redis) -> list[list[Any]]:
    """Every intent row of the queue's messages."""
    rows: list[list[Any]] = []
    for message_id in queue.lrange(QUEUE, 0, -1):
        rows.extend(json.loads(queue.hget(f"{QUEUE}.msgs", message_id) or b"{}")["args"][0])
    return rows


def openids(rnd: random.Random, count: int, alphabet: str = "abcAB_-9") -> list[str]:
    """``count`` short random openids from a small alphabet, so repeats are common."""
    return ["o" + "".join(rnd.choices(alphabet, k=rnd.randint(0, 4))) for _ in range(count)]


# -- the diff ---------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(8))
def test_diff_equals_set_differences(tmp_path: Path, seed: int) -> None:
    """On random sides with repeats, merged from many runs, the diff is exactly the set
    differences, each openid once, in sorted order."""
    # Given
    rnd = random.Random(seed)
    desired = openids(rnd, rnd.randint(0, 400))
    listed = openids(rnd, rnd.randint(0, 400))
    want = SortedRuns(str(tmp_path), name="desired", chunk_size=rnd.randint(1, 40))
    have = SortedRuns(str(tmp_path), name="listed", chunk_size=rnd.randint(1, 40))
    want.extend(desired)
    have.extend(listed)
    # When
    diff = Diff(want, have)
    changes = list(diff)
    # Then
    to_tag = [c.openid for c in changes if c.op == "tag"]
    to_untag = [c.openid for c in changes if c.op == "untag"]
    assert to_tag == sorted(set(desired) - set(listed))
    assert to_untag == sorted(set(listed) - set(desired))
    assert (diff.to_tag, diff.to_untag) == (len(to_tag), len(to_untag))
    assert diff.unchanged == len(set(desired) & set(listed))


def test_sorted_runs_spill_chunks_and_merge_them_once_each(tmp_path: Path) -> None:
    """A side larger than a chunk goes to disk as sorted runs; reading merges them without
    repeats, and no chunk in memory ever holds more than the chunk size."""
    # Given
    rnd = random.Random(7)
    values = openids(rnd, 1000, alphabet="abcdefgh")
    runs = SortedRuns(str(tmp_path), name="side", chunk_size=64)
    # When
    largest = 0
    for value in values:
        runs.add(value)
        largest = max(largest, len(runs._chunk))
    # Then
    assert runs.runs == 1000 // 64
    assert largest < 64
    assert list(runs) == sorted(set(values))
    assert len(list(tmp_path.iterdir())) == runs.runs


def test_a_side_within_one_chunk_stays_in_memory(tmp_path: Path) -> None:
    """A side that fits one chunk is sorted in memory: no file is written."""
    runs = SortedRuns(str(tmp_path), name="side", chunk_size=10)
    runs.extend(["oB", "oA", "oB"])
    assert list(runs) == ["oA", "oB"]
    assert list(tmp_path.iterdir()) == []


def test_desired_lines_ignore_whitespace_blanks_and_comments(tmp_path: Path) -> None:
    """CRLF, surrounding spaces, blank lines and # comments are not openids."""
    lines = ["# exported from the CRM\n", "oA\r\n", "  oB \n", "\n", "   \n", "oA\n", "oC"]
    runs = SortedRuns(str(tmp_path), name="desired")
    assert read_desired(lines, runs) == 7
    assert list(runs) == ["oA", "oB", "oC"]


def test_bad_lines_are_reported_by_number(tmp_path: Path) -> None:
    """Every line is read; the first five bad ones are named with their line numbers and
    the rest counted."""
    lines = ["oGood\n"] * 10
    bad_numbers = [3, 5, 6, 8, 9, 10]
    for number in bad_numbers:
        lines[number - 1] = "not an openid!\n"
    lines.append("o" * 65 + "\n")  # line 11: too long
    with pytest.raises(BadLines) as raised:
        read_desired(lines, SortedRuns(str(tmp_path), name="desired"))
    assert [bad.number for bad in raised.value.shown] == bad_numbers[:5]
    assert raised.value.total == 7
    assert "openid" in raised.value.shown[0].reason
    assert str(raised.value).startswith("7 bad lines (and 2 more): line 3: openid")


# -- tagsync reconcile --------------------------------------------------------------------


def write_lines(path: Path, lines: list[str]) -> str:
    path.write_text("".join(f"{line}\n" for line in lines))
    return str(path)


def test_reconcile_repairs_drift_of_50000_fans(
    env: dict[str, str],
    sim: Sim,
    redis_client: redis.Redis,
    start_worker: Any,
    tmp_path: Path,
) -> None:
    """50,000 desired against 50,000 listed, 5,000 off each way: reconcile sends exactly
    the 10,000 changes and the worker makes the tag's fans the desired set."""
    # Given
    fans = sim.fans(FANS)
    tag = make_tag(sim, "drift", fans[:50_000])
    desired = fans[5_000:]
    shuffled = desired + desired[:1000]  # an export in no order, with repeats
    random.Random(1).shuffle(shuffled)
    source = write_lines(tmp_path / "desired.txt", ["# CRM export", *shuffled])
    start_worker(processes=2, threads=4, TAGSYNC_RATE="200")
    # When
    result = tagsync(env, "reconcile", "--tag", str(tag), "--from", source, "--json")
    # Then
    assert result.returncode == 0, result.stderr
    outcome = json.loads(result.stdout)
    assert (outcome["to_tag"], outcome["to_untag"], outcome["unchanged"]) == (5000, 5000, 45000)
    assert outcome["enqueued"] == 10_000 and outcome["dry_run"] is False
    assert set(outcome["timings"]) >= {"read_s", "fetch_s", "diff_s"}
    wait_drained(redis_client, timeout_s=60)
    assert fans_of(sim, tag) == set(desired)
    # And a second run finds nothing to do.
    again = tagsync(env, "reconcile", "--tag", str(tag), "--from", source, "--dry-run")
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines()[0] == "to tag 0, to untag 0, unchanged 50000"


def test_dry_run_changes_nothing_and_counts_as_the_real_run(
    env: dict[str, str], sim: Sim, redis_client: redis.Redis, tmp_path: Path
) -> None:
    """--dry-run prints the counts the real run prints and enqueues nothing; the real run
    sends one intent per change, stamped now, for the account."""
    # Given
    fans = sim.fans(300)
    tag = make_tag(sim, "dry", fans[:200])
    source = write_lines(tmp_path / "desired.txt", fans[50:300])
    before = sim.state()
    batches = sim.stats()["batch_sizes"]
    # When
    dry = tagsync(env, "reconcile", "--tag", str(tag), "--from", source, "--dry-run")
    # Then
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.splitlines() == [
        "to tag 100, to untag 50, unchanged 150",
        "dry run: nothing enqueued",
    ]
    assert redis_client.llen(QUEUE) == 0
    assert sim.state() == before and sim.stats()["batch_sizes"] == batches
    # When
    started = time.time()
    real = tagsync(env, "reconcile", "--tag", str(tag), "--from", source)
    # Then
    assert real.returncode == 0, real.stderr
    assert real.stdout.splitlines()[0] == dry.stdout.splitlines()[0]
    rows = queued_rows(redis_client)
    assert sorted((r[0], r[2]) for r in rows) == sorted(
        [("untag", o) for o in fans[:50]] + [("tag", o) for o in fans[200:300]]
    )
    assert {(r[1], r[4]) for r in rows} == {(tag, APPID)}
    assert len({r[3] for r in rows}) == 1 and started <= rows[0][3] <= time.time()


def test_name_resolution_and_bad_input_enqueue_nothing(
    env: dict[str, str], sim: Sim, redis_client: redis.Redis, tmp_path: Path
) -> None:
    """--name finds the tag by name; an unknown name, a bad line, a reserved tag or an
    empty FILE exit 2 and enqueue nothing; --create makes the tag for a good FILE only."""
    fans = sim.fans(20)
    make_tag(sim, "crm-vip", fans[:10])
    good = write_lines(tmp_path / "good.txt", fans[5:15])
    bad = write_lines(tmp_path / "bad.txt", [*fans[:2], "oops, not an openid", fans[3]])
    empty = write_lines(tmp_path / "empty.txt", ["# nobody"])

    by_name = tagsync(env, "reconcile", "--name", "crm-vip", "--from", good, "--dry-run")
    assert by_name.returncode == 0, by_name.stderr
    assert by_name.stdout.startswith("to tag 5, to untag 5, unchanged 5\n")

    unknown = tagsync(env, "reconcile", "--name", "nope", "--from", good)
    assert unknown.returncode == 2
    assert "no tag named 'nope'" in unknown.stderr and "tagsync tags create nope" in unknown.stderr

    bad_line = tagsync(env, "reconcile", "--name", "fresh", "--create", "--from", bad)
    assert bad_line.returncode == 2
    assert f"{bad} line 3: openid must be" in bad_line.stderr
    assert "nothing enqueued" in bad_line.stderr

    reserved = tagsync(env, "reconcile", "--tag", "2", "--from", good)
    assert reserved.returncode == 2 and "reserved" in reserved.stderr

    nobody = tagsync(env, "reconcile", "--name", "crm-vip", "--from", empty)
    assert nobody.returncode == 2 and "--allow-empty" in nobody.stderr

    assert redis_client.llen(QUEUE) == 0
    assert "fresh" not in {t["name"] for t in sim.state()["tags"].values()}

    created = tagsync(env, "reconcile", "--name", "fresh", "--create", "--from", good)
    assert created.returncode == 0, created.stderr
    assert created.stdout.startswith("to tag 10, to untag 0, unchanged 0\n")
    fresh = [int(i) for i, t in sim.state()["tags"].items() if t["name"] == "fresh"]
    assert len(fresh) == 1
    assert sorted(r[2] for r in queued_rows(redis_client)) == sorted(fans[5:15])
    assert {r[1] for r in queued_rows(redis_client)} == set(fresh)


def reconcile_stdin(env: dict[str, str], text: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``tagsync reconcile --from - ARGS`` with ``text`` on standard input."""
    return subprocess.run(
        [sys.executable, "-m", "worker", "reconcile", "--from", "-", *args],
        input=text,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_reads_standard_input(env: dict[str, str], sim: Sim) -> None:
    """--from - reads the openids from standard input (here with CRLF line ends); without
    Redis only a dry run is possible."""
    fans = sim.fans(6)
    tag = make_tag(sim, "stdin", fans[:3])
    text = "\r\n".join(fans[1:6]) + "\r\n"
    no_redis = reconcile_stdin({**env, "TAGSYNC_REDIS_URL": ""}, text, "--tag", str(tag))
    assert no_redis.returncode == 2 and "--dry-run" in no_redis.stderr
    dry = reconcile_stdin(env, text, "--tag", str(tag), "--dry-run", "--show", "1")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.splitlines()[:3] == [
        "to tag 3, to untag 1, unchanged 2",
        f"  tag   {min(fans[3:6])}",
        f"  untag {fans[0]}",
    ]
