"""Options that several ``tagsync`` commands share."""

from __future__ import annotations

import argparse
import math
from typing import Any

from producers.redis_url import connect
from worker.admin.gated_client import choose_appid, served
from worker.base.settings import Settings


def add_account_option(parser: argparse.ArgumentParser) -> None:
    """``--account APPID``: which account a command is about."""
    parser.add_argument(
        "--account",
        metavar="APPID",
        help="the account (default: the only one served, or WECHAT_APPID)",
    )


def finite(value: str) -> float:
    """An argparse type: a finite number (``nan`` and ``inf`` are refused in one line)."""
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
    if not math.isfinite(number):
        raise argparse.ArgumentTypeError(f"{value!r} is not a finite number")
    return number


def account_redis(args: argparse.Namespace) -> tuple[Any, str]:
    """The deployment's Redis and the account ``--account`` names (checked: one served)."""
    settings = Settings.from_env()
    connection = connect(settings.require_redis_url())
    config, directory = served(settings)
    appids = (
        directory.appids() if directory is not None else frozenset(a.appid for a in config.accounts)
    )
    return connection, choose_appid(settings, args.account, appids)
