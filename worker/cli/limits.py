"""``tagsync limits``: an account's rate, burst and daily budget, changed without a restart."""

from __future__ import annotations

import argparse
import json
from typing import Any

from worker.accounts import controls
from worker.cli.options import account_redis, add_account_option, finite


def register(commands: Any) -> None:
    """Add ``limits`` to the ``tagsync`` command line."""
    limits = commands.add_parser(
        "limits",
        help="set an account's rate, burst or daily budget at run time (every worker, next call)",
        description=(
            "Limits set here are kept in Redis and win over the accounts file's (or "
            "TAGSYNC_RATE's), which apply again after `limits clear`. Every worker process "
            "takes a set at its next call slot and a clear within 2 s. Bounds: rate "
            f"{controls.BOUNDS['rate'][0]:g} to {controls.BOUNDS['rate'][1]:g} calls/s, "
            "burst 1 to 1000, daily budget 0 (none) to 100,000,000; values beyond are clamped."
        ),
    )
    actions = limits.add_subparsers(dest="action", required=True, metavar="ACTION")
    set_ = actions.add_parser("set", help="set one or more limits")
    set_.add_argument("--rate", type=finite, metavar="R", help="calls per second")
    set_.add_argument("--burst", type=int, metavar="B", help="calls back to back")
    set_.add_argument("--daily-budget", type=int, metavar="N", help="calls a day (0: none)")
    add_account_option(set_)
    set_.set_defaults(run=_set)
    clear = actions.add_parser("clear", help="forget them: the accounts file's apply again")
    add_account_option(clear)
    clear.set_defaults(run=_clear)
    show = actions.add_parser("show", help="the limits set at run time, if any")
    show.add_argument("--json", action="store_true", help="print JSON")
    add_account_option(show)
    show.set_defaults(run=_show)


def _set(args: argparse.Namespace) -> int:
    connection, account = account_redis(args)
    found = controls.set_limits(
        connection,
        account,
        rate=args.rate,
        burst=args.burst,
        daily_budget=args.daily_budget,
        by=controls.operator(),
    )
    print(f"limits of {account}: {_describe(found)} (every worker from its next call)")
    return 0


def _clear(args: argparse.Namespace) -> int:
    connection, account = account_redis(args)
    cleared = controls.clear_limits(connection, account)
    print(f"limits of {account} cleared" if cleared else f"{account} had no limits set")
    return 0


def _show(args: argparse.Namespace) -> int:
    connection, account = account_redis(args)
    found = controls.limits_set(connection, account)
    if args.json:
        print(json.dumps(None if found is None else found.__dict__))
        return 0
    print(
        f"{account}: " + ("none set (the accounts file's)" if found is None else _describe(found))
    )
    return 0


def _describe(found: controls.LimitsSet) -> str:
    parts = []
    if found.rate is not None:
        parts.append(f"rate {found.rate:g}/s")
    if found.burst is not None:
        parts.append(f"burst {found.burst}")
    if found.daily_budget is not None:
        parts.append(f"daily budget {found.daily_budget or 'none'}")
    return ", ".join(parts) + f" (set by {found.by})"
