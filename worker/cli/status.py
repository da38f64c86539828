"""``tagsync status``: the accounts, the backlog per tag and the worker processes; a live
view on a terminal, plain text through a pipe, JSON, or a health verdict (``--check``)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from rich.console import Console

from producers.redis_url import connect
from worker.accounts import Accounts, accounts_config
from worker.admin.health import MAX_PENDING_AGE_S, assess
from worker.admin.status_report import collect_status
from worker.base.settings import Settings, SettingsError
from worker.cli import status_view
from worker.cli.options import add_account_option
from worker.queues import queue_connection


def register(commands: Any) -> None:
    """Add ``status`` to the ``tagsync`` command line."""
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


def run_status(args: argparse.Namespace) -> int:
    """Show the backlog per tag and op, the accounts and totals: JSON, a live view on a
    terminal (or ``--once``), else plain text."""
    if args.interval < 0.1:
        raise SettingsError("--interval must be at least 0.1 s")
    settings = Settings.from_env()
    connection = connect(settings.require_redis_url())
    config = accounts_config(settings)
    directory = Accounts(config, redis=connection, api_base=settings.api_base)
    if args.account is not None and args.account not in directory.appids():
        print(f"tagsync: note: {args.account} is not served by this deployment", file=sys.stderr)

    queue = queue_connection(settings, connection)

    def report() -> dict[str, Any]:
        return collect_status(
            connection, settings, directory=directory, only=args.account, queue=queue
        )

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
