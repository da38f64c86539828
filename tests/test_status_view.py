"""`tagsync status` as an operator sees it: a live table on a terminal, plain text through
a pipe, and the rate each account is using (``worker.cli.status_view``)."""

from __future__ import annotations

import os
import pty
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import redis

import producers
from tests.helpers import APPID, Sim, tagsync, wait_until
from worker.cli.status_view import GateLook, RateMeter, rate_between
from worker.gate import BATCH_API, AccountGate
from worker.pending import PendingStore

#: Tags of the paused backlog and how many intents each has (the first is the busiest).
BACKLOG = {501: 6, 502: 3, 503: 2, 504: 1, 505: 1, 506: 1, 507: 1, 508: 1}
#: ANSI control sequences (colours, cursor moves) between the frames' text.
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class Terminal:
    """``tagsync status`` on a pseudo-terminal: its screen output as it comes."""

    def __init__(self, env: dict[str, str], *args: str, columns: int, lines: int) -> None:
        self.master, replica = pty.openpty()
        term = {"TERM": "xterm", "COLUMNS": str(columns), "LINES": str(lines)}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "worker", "status", *args],
            env={**env, **term},
            stdin=replica,
            stdout=replica,
            stderr=replica,
        )
        os.close(replica)
        self._chunks: list[bytes] = []
        # Read all the time: a full pty would block the command.
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self.master, 65536)
            except OSError:  # EIO: the command exited and closed its side
                return
            if not chunk:
                return
            self._chunks.append(chunk)

    @property
    def raw(self) -> str:
        """Everything written so far, control sequences included."""
        return b"".join(self._chunks).decode(errors="replace")

    @property
    def text(self) -> str:
        """Everything written so far, without control sequences."""
        return ANSI.sub("", self.raw).replace("\r", "")

    def frames(self) -> list[str]:
        """The frames drawn so far, each from its heading line."""
        return ["tagsync status" + f for f in self.text.split("tagsync status")[1:]]

    def wait_exit(self, timeout_s: float) -> int:
        """The exit status, once the command ended and its output is read."""
        status = self.process.wait(timeout=timeout_s)
        self._reader.join(timeout=5)
        return status

    def stop(self) -> None:
        """Kill the command if it still runs; close the terminal."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._reader.join(timeout=5)
        os.close(self.master)


@pytest.fixture
def terminal(env: dict[str, str]) -> Iterator[Any]:
    """Open ``tagsync status ARGS`` on a pseudo-terminal (stopped at teardown)."""
    opened: list[Terminal] = []

    def open_(*args: str, columns: int = 120, lines: int = 30, **extra: str) -> Terminal:
        opened.append(Terminal({**env, **extra}, *args, columns=columns, lines=lines))
        return opened[-1]

    yield open_
    for screen in opened:
        screen.stop()


@pytest.fixture
def paused_backlog(
    start_worker: Any, queue: redis.Redis, redis_client: redis.Redis
) -> dict[int, int]:
    """Intents pending in Redis for ``BACKLOG``'s tags: sent by producers, ingested by a
    real worker, not flushed (the account is paused for a credential error)."""
    gate = AccountGate(redis_client, rate=20)
    gate.pause(
        APPID,
        reason="credentials",
        errcode=40001,
        until="for",
        ms=120_000,
        message="invalid credential",
    )
    for tag_id, count in BACKLOG.items():
        producers.tag(tag_id, [f"fan{tag_id}x{i}" for i in range(count)], account=APPID)
    start_worker(processes=1, threads=2)
    store = PendingStore(redis_client)
    total = sum(BACKLOG.values())
    wait_until(
        lambda: sum(t.pending_tag for t in store.status()) == total,
        what="the worker to ingest the backlog",
    )
    return BACKLOG


def account_row(frame: str) -> str:
    """The account table's row of the test account in a frame."""
    return next(line for line in frame.splitlines() if re.match(rf"{APPID}\s+\d+/s", line))


def test_live_view_redraws_and_exits_0_on_ctrl_c(
    paused_backlog: dict[int, int], terminal: Any
) -> None:
    """On a terminal, `tagsync status` redraws a table of accounts and tags until Ctrl-C,
    then exits 0 without a traceback."""
    # Given a paused account with intents pending on its tags
    # When status runs on a terminal for two redraws
    screen = terminal("--interval", "0.3")
    wait_until(lambda: len(screen.frames()) >= 3, timeout_s=15, what="three frames")
    screen.process.send_signal(signal.SIGINT)
    status = screen.wait_exit(timeout_s=5)
    # Then each frame has both tables and the totals, the busiest tag first
    assert status == 0, screen.text[-2000:]
    frame = screen.frames()[1]
    assert "PAUSED credentials 40001 until" in account_row(frame)
    tag_rows = [
        line.split() for line in frame.splitlines() if re.match(rf"{APPID}\s+5\d\d\s", line)
    ]
    assert tag_rows[0][:4] == [APPID, "501", "6", "0"]
    assert {row[1] for row in tag_rows} == {str(tag) for tag in paused_backlog}
    assert "totals: 16 pending, 0 in flight" in frame
    # And the first frame has no rate yet, the next ones have one: nothing was called
    assert account_row(screen.frames()[0]).split()[2] == "-"
    assert account_row(frame).split()[2] == "0.0/s"
    assert "Traceback" not in screen.text


def test_once_prints_one_frame_that_fits_the_terminal(
    paused_backlog: dict[int, int], terminal: Any
) -> None:
    """`tagsync status --once` on a terminal prints one frame, cut to the terminal's
    height with a "+N more" line, and exits 0."""
    # Given more tags with intents than a 16-line terminal has room for
    # When status --once runs on it
    screen = terminal("--once", lines=16)
    status = screen.wait_exit(timeout_s=15)
    # Then one frame, no live redraw, and the busiest tags shown first
    assert status == 0, screen.text
    (frame,) = screen.frames()
    assert "Ctrl-C" not in frame
    lines = frame.rstrip("\n").splitlines()
    assert len(lines) < 16
    shown = [line.split()[1] for line in lines if re.match(rf"{APPID}\s+5\d\d\s", line)]
    assert shown[0] == "501"
    assert f"+{len(paused_backlog) - len(shown)} more tags" in frame
    assert lines[-1].startswith("totals: 16 pending")


def test_pipe_gets_the_plain_text(paused_backlog: dict[int, int], env: dict[str, str]) -> None:
    """Through a pipe, `tagsync status` prints the plain lines scripts parse, no colours."""
    # Given a paused account with intents pending on its tags
    # When status runs with its output to a pipe
    result = tagsync(env, "status")
    # Then the header, one line per tag, one per account and the totals, as before
    assert result.returncode == 0, result.stderr
    assert "\x1b" not in result.stdout
    lines = result.stdout.splitlines()
    assert lines[0] == (
        f"{'ACCOUNT':<20} {'TAG':>6}  PENDING+  PENDING- IN-FLIGHT    OLDEST  STATE"
    )
    tags = {int(line.split()[1]): line for line in lines[1 : 1 + len(paused_backlog)]}
    assert set(tags) == set(paused_backlog)
    assert re.fullmatch(
        rf"{APPID:<20}    501         6         0         0 +\d+\.\ds  \S+", tags[501]
    )
    account = next(line for line in lines if line.startswith("account "))
    assert re.fullmatch(
        rf"account {APPID}: PAUSED \(credentials, errcode 40001\) until \d\d:\d\d:\d\d: "
        r"invalid credential; rate 20/s \(from settings: no call yet\), slots reserved \d+ ms "
        r"ahead; 0 calls today "
        r"\(budget none\); token (cached, \d+ s left|not cached)",
        account,
    )
    assert lines[-1] == "totals: 16 pending, 0 in flight, 0 queued messages, 0 dead letters"


@pytest.mark.slow
def test_live_view_shows_the_rate_in_use_while_a_backlog_drains(
    start_worker: Any, queue: redis.Redis, sim: Sim, terminal: Any
) -> None:
    """While a worker without a daily budget flushes a backlog at 10 calls/s, the live view
    shows the rate in use from the gate's count of calls: above 0, never above the limit;
    and the calls counted today."""
    # Given a worker limited to 10 calls/s, no daily budget, and a live view
    limits = {"TAGSYNC_RATE": "10", "TAGSYNC_DAILY_BUDGET": ""}
    tags = [sim.api("tags/create", {"tag": {"name": f"rate{i}"}})["tag"]["id"] for i in range(5)]
    start_worker(processes=1, threads=4, **limits)
    screen = terminal("--interval", "0.5", **limits)
    wait_until(lambda: len(screen.frames()) >= 1, timeout_s=15, what="the first frame")
    # When a backlog of 40 batch calls (4 s at the limit) arrives
    for tag_id in tags:
        producers.tag(tag_id, sim.fans(400), account=APPID)

    def rows() -> list[tuple[float, int]]:
        found = []
        for frame in screen.frames()[1:]:
            row = re.match(rf"{APPID}\s+10/s\s+([\d.]+)/s\s+\d+ ms\s+(\d+)\s", account_row(frame))
            if row:
                found.append((float(row[1]), int(row[2])))
        return found

    def busy() -> list[float]:
        """The rates after the first above 0: that frame holds the start, where the gate's
        burst of 1 lets the first call go at once (up to 11.8/s over 0.5 s, and right)."""
        rates = [rate for rate, _ in rows()]
        started = next((i for i, rate in enumerate(rates) if rate > 0), len(rates))
        return rates[started + 1 :]

    # Then a frame shows the calls being made, as the gate counts them, never above 10/s
    wait_until(lambda: len(busy()) >= 2, timeout_s=20, what="two frames of a rate in use")
    assert all(0 < rate <= 10 for rate in busy()[:-1]), rows()
    # And the calls counted today, with no "/budget"
    wait_until(lambda: rows()[-1][1] >= 40, timeout_s=20, what="40 calls counted today")
    assert all(rate <= 10 for rate in busy()), rows()


def test_rate_meter_reads_the_calls_the_gate_counts(redis_client: redis.Redis) -> None:
    """Without a daily budget too, the calls between two looks are the growth of the gate's
    count, less the slots still reserved ahead (counted, not yet made): exact once they
    passed."""
    # Given an account at 10 calls/s without a daily budget, looked at once
    gate = AccountGate(redis_client, rate=10)
    meter = RateMeter(redis_client)
    before = meter.looks([APPID])[APPID]
    # When the gate admits 5 calls, their slots a tenth of a second apart
    for _ in range(5):
        assert gate.admit(APPID, api=BATCH_API["tag"], max_sleep_ms=60_000).kind == "go"
    during = meter.looks([APPID])[APPID]
    wait_until(lambda: gate.reserved_ahead_ms(APPID) == 0, what="the reserved slots to pass")
    after = meter.looks([APPID])[APPID]

    def calls(first: GateLook, second: GateLook) -> int:
        rate = rate_between(first, second, limit_per_s=10, burst=1)
        assert rate is not None
        return round(rate * (second.now_ms - first.now_ms) / 1000)

    # Then the calls whose slots came count, the ones still ahead do not yet
    assert 1 <= calls(before, during) < 5
    assert calls(before, after) == 5
    # And an idle account reads 0
    assert calls(after, meter.looks([APPID])[APPID]) == 0


def test_rate_meter_gives_no_figure_across_a_reset_count(redis_client: redis.Redis) -> None:
    """A count reset between two looks (`accounts resume`, a new Shanghai day) gives no
    rate rather than a wrong one; the next look has one again."""
    # Given an account with 3 calls counted, looked at
    gate = AccountGate(redis_client, rate=1000)
    meter = RateMeter(redis_client)
    for _ in range(3):
        gate.admit(APPID, api=BATCH_API["tag"])
    state = {APPID: {"rate": {"limit_per_s": 1000, "burst": 1}}}
    assert meter.rates(state) == {APPID: None}  # the first look
    # When the count is reset and one more call made
    gate.resume(APPID)
    gate.admit(APPID, api=BATCH_API["tag"])
    wait_until(lambda: gate.reserved_ahead_ms(APPID) == 0, what="the reserved slot to pass")
    # Then no figure at the next look, a figure again at the one after
    assert meter.rates(state) == {APPID: None}
    assert meter.rates(state)[APPID] == 0
