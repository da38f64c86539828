"""``tagsync pause`` and ``tagsync resume``: stop and restart an account's (or one tag's)
calls without a restart; intents keep being accepted and kept meanwhile."""

from __future__ import annotations

import argparse
from typing import Any

from worker.accounts import controls
from worker.base.settings import Settings
from worker.cli.options import account_redis, add_account_option
from worker.queues import queue_connection


def register(commands: Any) -> None:
    """Add ``pause`` and ``resume`` to the ``tagsync`` command line."""
    pause = commands.add_parser(
        "pause",
        help="pause an account's (or one tag's) WeChat calls until resumed",
        description=(
            "Pause an account's calls (reason 'operator'), or only one of its tags. Every "
            "worker stops calling at once (a call in flight finishes); intents keep being "
            "accepted and wait. `tagsync status` shows who paused it and why."
        ),
    )
    resume = commands.add_parser(
        "resume", help="lift an operator's pause; the waiting tags are flushed at once"
    )
    for parser, run in ((pause, _pause), (resume, _resume)):
        add_account_option(parser)
        parser.add_argument("--tag", type=int, metavar="ID", help="only this tag")
        parser.set_defaults(run=run)
    pause.add_argument("--reason", default="", metavar="TEXT", help="why (shown in status)")


def _pause(args: argparse.Namespace) -> int:
    connection, account = account_redis(args)
    by = controls.operator()
    controls.pause(connection, account, tag=args.tag, reason=args.reason, by=by)
    what = f"tag {args.tag} of {account}" if args.tag is not None else account
    print(f"paused {what} (by {by}); intents are kept until `tagsync resume`")
    return 0


def _resume(args: argparse.Namespace) -> int:
    connection, account = account_redis(args)
    queue = queue_connection(Settings.from_env(), connection)
    was = controls.resume(connection, account, tag=args.tag, queue=queue)
    what = f"tag {args.tag} of {account}" if args.tag is not None else account
    print(f"resumed {what}" if was else f"{what} was not paused by an operator")
    return 0
