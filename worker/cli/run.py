"""``tagsync worker`` and ``tagsync status``."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from typing import Any, NoReturn

import redis
import structlog
from rich.console import Console

from producers.intents import QUEUE_NAME
from producers.redis_url import connect
from worker.accounts import Account, Accounts, accounts_config
from worker.accounts.authorized import AuthorizedAccounts
from worker.accounts.config import AccountConfig
from worker.cli import status_view
from worker.cli.accounts import add_account_option
from worker.dead_letters import DeadLetters
from worker.gate import BATCH_API, AccountGate
from worker.gated import ADMIN_APIS
from worker.health import MAX_PENDING_AGE_S, assess
from worker.pending import PendingStore
from worker.runtime.launch import dramatiq_command, dramatiq_env
from worker.runtime.lifecycle import heartbeats, redis_now
from worker.runtime.processes import PortTaken, check_port_free
from worker.runtime.settings import Settings, SettingsError
from worker.wechat.client import WeChatClient
from worker.wechat.errors import NetworkError, WeChatError

log = structlog.get_logger("tagsync.worker")


def register(commands: Any) -> None:
    """Add ``worker`` and ``status`` to the ``tagsync`` command line."""
    worker = commands.add_parser(
        "worker",
        help="run the worker (dramatiq) that ingests intents and flushes them to WeChat",
        description=(
            "Run the production worker: dramatiq with tagsync's actors (worker.actors). "
            "Checks Redis and the WeChat credentials first and refuses to start without them."
        ),
    )
    worker.add_argument(
        "--processes",
        type=int,
        default=os.cpu_count() or 1,
        help="worker processes (default: cores)",
    )
    worker.add_argument(
        "--threads", type=int, default=8, help="threads per process (default %(default)s)"
    )
    worker.add_argument(
        "--skip-checks", action="store_true", help="start without checking Redis and WeChat"
    )
    worker.add_argument(
        "--wait",
        type=float,
        default=0,
        metavar="S",
        help="keep retrying the checks for up to S seconds (Redis or WeChat still starting)",
    )
    worker.set_defaults(run=run_worker, service=True)

    status = commands.add_parser(
        "status",
        help="pending and in-flight intents per tag, dead letters",
        description=(
            "Accounts (pauses, rate limit and rate in use, budget, token) and tags (pending, "
            "in flight, oldest pending). On a terminal a live view, redrawn every --interval "
            "seconds until Ctrl-C; through a pipe one look in plain text."
        ),
    )
    status.add_argument("--json", action="store_true", help="print JSON")
    status.add_argument(
        "--check",
        action="store_true",
        help=(
            "for orchestrators and cron: print the verdict and exit 0 healthy, 1 degraded "
            "(paused, backlog older than --max-age, token failing), 2 down (Redis "
            "unreachable, no live worker)"
        ),
    )
    status.add_argument(
        "--max-age",
        type=float,
        default=MAX_PENDING_AGE_S,
        metavar="S",
        help="with --check: oldest pending intent allowed, s (default %(default)g)",
    )
    status.add_argument(
        "--once", action="store_true", help="print the tables once and exit (also on a terminal)"
    )
    status.add_argument(
        "--interval",
        type=float,
        default=1.0,
        metavar="S",
        help="seconds between redraws of the live view (default %(default)g)",
    )
    add_account_option(status)
    status.set_defaults(run=run_status)


def preflight(settings: Settings) -> None:
    """Refuse to start without a reachable Redis and a WeChat that takes the credentials.

    Each configured account's token is fetched fresh (a cached one proves neither the secret
    nor ``WECHAT_API_BASE``). One account: refused credentials stop the start. An accounts
    file: an account WeChat refuses is logged and pauses only itself once running; WeChat
    unreachable stops the start either way.
    """
    if not settings.redis_url:
        raise SettingsError("TAGSYNC_REDIS_URL must be set (e.g. redis://localhost:6379/0)")
    config = accounts_config(settings)
    connection = connect(settings.redis_url, socket_connect_timeout=3)
    try:
        connection.ping()
    except redis.RedisError as exc:
        raise SettingsError(f"Redis at TAGSYNC_REDIS_URL does not answer: {exc}") from None
    try:
        if settings.accounts_file:
            authorized = len(AuthorizedAccounts(connection).appids()) if config.component else 0
            log.info(
                "worker.accounts",
                accounts=len(config.accounts),
                source=str(config.source),
                component=config.component.appid if config.component else None,
                authorized=authorized,
            )
        for account in config.accounts:
            _check_credentials(account, settings, connection, fatal=not settings.accounts_file)
    finally:
        connection.close()


def _check_credentials(
    account: AccountConfig, settings: Settings, connection: redis.Redis, *, fatal: bool
) -> None:
    """Fetch ``account``'s token from WeChat; log what is left of today's quota."""
    client = WeChatClient(
        appid=account.appid,
        secret=account.secret,
        api_base=settings.api_base,
        token_mode=account.limits.token_mode,
        redis=connection,
    )
    try:
        client.tokens.verify()
    except NetworkError as exc:
        raise SettingsError(
            f"WeChat cannot be reached at WECHAT_API_BASE={settings.api_base}: {exc}"
        ) from None
    except WeChatError as exc:
        if fatal:
            raise SettingsError(
                f"WeChat refuses the credentials of {account.appid}: {exc}"
            ) from None
        log.error("worker.credentials_refused", account=account.appid, errcode=exc.errcode)
        return
    try:
        # Worth knowing at start: how much of today's quota is left (not fatal if unknown).
        quota = client.get_quota()
        log.info(
            "worker.quota",
            account=account.appid,
            api="batchtagging",
            used=quota.used,
            limit=quota.daily_limit,
        )
    except WeChatError as exc:
        log.warning("worker.quota_unknown", account=account.appid, error=str(exc))
    finally:
        client.close()


def run_worker(args: argparse.Namespace) -> NoReturn:
    """Check the settings, then become ``dramatiq worker.actors``."""
    if args.processes < 1 or args.threads < 1:
        raise SettingsError("--processes and --threads must be at least 1")
    settings = Settings.from_env()
    if not args.skip_checks:
        deadline = time.monotonic() + args.wait
        while True:
            try:
                preflight(settings)
                break
            except SettingsError as exc:
                if time.monotonic() >= deadline:
                    raise
                log.warning("worker.waiting", reason=str(exc))
                time.sleep(1)
    # Before anything starts: a second worker on this host would fail to serve its metrics
    # (and, sharing a directory, wipe the first one's).
    try:
        check_port_free(settings.metrics_host, settings.metrics_port, "TAGSYNC_METRICS_PORT")
    except PortTaken as exc:
        raise SettingsError(
            f"{exc}: is another tagsync worker running on this host? Give each one its own "
            "TAGSYNC_METRICS_PORT"
        ) from None
    command = dramatiq_command(
        processes=args.processes, threads=args.threads, wechat_timeout_s=settings.wechat_timeout_s
    )
    log.info("worker.starting", processes=args.processes, threads=args.threads)
    for handler in logging.getLogger().handlers:
        handler.flush()  # before exec replaces this process and its buffers
    # Becomes dramatiq: signals go straight to it.
    os.execve(sys.executable, command, dramatiq_env(os.environ))  # noqa: S606


def account_status(
    connection: redis.Redis, account: Account | str, settings: Settings
) -> dict[str, Any]:
    """An account's pause, budget, rate and token, as a JSON-ready dict."""
    if isinstance(account, Account):
        appid, gate = account.appid, account.gate
    else:  # an account with intents that this deployment does not serve (any more)
        appid = account
        gate = AccountGate(connection, rate=settings.rate)
    account = appid
    pauses = {
        scope: {
            "reason": pause.reason,
            "errcode": pause.errcode,
            "until": pause.until,
            "message": pause.message,
        }
        for scope, pause in gate.pauses(account, (*BATCH_API.values(), *ADMIN_APIS)).items()
    }
    token_ms = int(connection.pttl(f"tagsync:{{{account}}}:token"))
    # The limits the workers used on their last call; before any, what the settings say.
    in_use = gate.limits_in_use(account)
    rate, burst, budget = in_use or (gate.rate, gate.burst, gate.daily_budget or None)
    return {
        # The whole account's pause; `pauses` also holds each paused API (45009 is per API).
        "paused": pauses.get("account"),
        "pauses": pauses,
        "rate": {
            "limit_per_s": rate,
            "burst": burst,
            "source": "workers" if in_use else "settings",
            # How far ahead call slots are already reserved: near 0 idle, growing under load.
            "reserved_ahead_ms": gate.reserved_ahead_ms(account),
        },
        "budget": {"limit": budget, "used_today": gate.budget_used(account)},
        "token": {
            "cached": token_ms > 0,
            "expires_in_s": round(token_ms / 1000) if token_ms > 0 else None,
        },
    }


def collect_status(
    connection: redis.Redis,
    settings: Settings | None = None,
    *,
    directory: Accounts | None = None,
    only: str | None = None,
) -> dict[str, Any]:
    """Everything ``tagsync status`` shows, as a JSON-ready dict (``only``: one account)."""
    settings = settings or Settings()
    store = PendingStore(connection)
    now = time.time()
    tags: list[dict[str, Any]] = []
    for tag in store.status():
        if only is not None and tag.account != only:
            continue
        tags.append(
            {
                "account": tag.account,
                "tag_id": tag.tag_id,
                "pending": {"tag": tag.pending_tag, "untag": tag.pending_untag},
                "in_flight": tag.inflight + tag.splitting,
                "splitting": tag.splitting,
                "oldest_pending_age_s": round(now - tag.oldest_ts, 3) if tag.oldest_ts else None,
                "flushing": tag.leased,
                "scheduled": tag.scheduled,
            }
        )
    ages = [t["oldest_pending_age_s"] for t in tags if t["oldest_pending_age_s"] is not None]
    served = directory.appids() if directory is not None else frozenset()
    accounts = {t["account"] for t in tags} | set(served)
    if settings.appid and directory is None:
        accounts.add(settings.appid)
    if only is not None:
        accounts = {only}

    def parts(appid: str) -> Account | str:
        found = directory.get(appid) if directory is not None and appid in served else None
        return found or appid

    return {
        "accounts": {
            appid: account_status(connection, parts(appid), settings) for appid in sorted(accounts)
        },
        "tags": tags,
        "workers": workers_report(connection),
        "totals": {
            "pending": sum(t["pending"]["tag"] + t["pending"]["untag"] for t in tags),
            "in_flight": sum(t["in_flight"] for t in tags),
            "oldest_pending_age_s": max(ages) if ages else None,
            "queued_messages": int(connection.llen(f"dramatiq:{QUEUE_NAME}")),
            "dead_letters": DeadLetters(connection).count(),
        },
    }


def workers_report(connection: redis.Redis) -> list[dict[str, Any]]:
    """The worker processes' heartbeats, each with ``alive`` and ages on Redis's clock."""
    now = redis_now(connection)
    return [
        {
            "name": beat.name,
            "host": beat.host,
            "pid": beat.pid,
            "started_at": beat.started_at,
            "threads": beat.threads,
            "messages": beat.messages,
            "alive": beat.alive(now),
            "beat_age_s": round(now - beat.beat_at, 1),
            "last_message_age_s": (
                None if beat.last_message_at is None else round(now - beat.last_message_at, 1)
            ),
        }
        for beat in heartbeats(connection)
    ]


def check(report: dict[str, Any], *, max_age_s: float, as_json: bool) -> int:
    """``status --check``: the verdict and its reasons; exit 0 healthy, 1 degraded, 2 down."""
    health = assess(report, max_age_s=max_age_s)
    if as_json:
        print(json.dumps({**report, "health": health.as_dict()}))
        return health.exit_code
    alive = sum(1 for w in report["workers"] if w["alive"])
    totals = report["totals"]
    print(
        f"{health.verdict}: {alive} live worker processes, {totals['pending']} pending, "
        f"{totals['dead_letters']} dead letters"
    )
    for problem in health.problems:
        print(f"  {problem}")
    return health.exit_code


def run_status(args: argparse.Namespace) -> int:
    """Show the backlog per tag and op, the accounts and totals: JSON, a live view on a
    terminal (or ``--once``), else plain text."""
    if args.interval < 0.1:
        raise SettingsError("--interval must be at least 0.1 s")
    settings = Settings.from_env()
    if not settings.redis_url:
        raise SettingsError("TAGSYNC_REDIS_URL must be set")
    connection = connect(settings.redis_url)
    config = accounts_config(settings)
    directory = Accounts(config, redis=connection, api_base=settings.api_base)
    if args.account is not None and args.account not in directory.appids():
        print(f"tagsync: note: {args.account} is not served by this deployment", file=sys.stderr)

    def report() -> dict[str, Any]:
        return collect_status(connection, settings, directory=directory, only=args.account)

    if args.check:
        return check(report(), max_age_s=args.max_age, as_json=args.json)
    if args.json:
        print(json.dumps(report()))
        return 0
    if args.once or sys.stdout.isatty():
        return status_view.watch(
            report,
            status_view.RateMeter(connection),
            console=Console(),
            interval_s=args.interval,
            once=args.once,
        )
    print(status_view.plain_text(report()))
    return 0
