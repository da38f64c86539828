"""``tagsync worker``: check the settings, Redis and WeChat, then become dramatiq."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from typing import Any, NoReturn

import redis
import structlog

from producers.redis_url import connect
from worker.accounts import accounts_config
from worker.accounts.authorized import AuthorizedAccounts
from worker.accounts.config import AccountConfig
from worker.base.settings import Settings, SettingsError
from worker.runtime.launch import dramatiq_command, dramatiq_env
from worker.runtime.processes import PortTaken, check_port_free
from worker.wechat.client import WeChatClient
from worker.wechat.errors import NetworkError, WeChatError

log = structlog.get_logger("tagsync.worker")


def register(commands: Any) -> None:
    """Add ``worker`` to the ``tagsync`` command line."""
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


def preflight(settings: Settings) -> None:
    """Refuse to start without a reachable Redis and a WeChat that takes the credentials.

    Each configured account's token is fetched fresh (a cached one proves neither the secret
    nor ``WECHAT_API_BASE``). One account: refused credentials stop the start. An accounts
    file: an account WeChat refuses is logged and pauses only itself once running; WeChat
    unreachable stops the start either way.
    """
    url = settings.require_redis_url("(e.g. redis://localhost:6379/0)")
    config = accounts_config(settings)
    connection = connect(url, socket_connect_timeout=3)
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
