"""Options that several ``tagsync`` commands share."""

from __future__ import annotations

import argparse


def add_account_option(parser: argparse.ArgumentParser) -> None:
    """``--account APPID``: which account a command is about."""
    parser.add_argument(
        "--account",
        metavar="APPID",
        help="the account (default: the only one served, or WECHAT_APPID)",
    )
