"""``tagsync explain``: why is this fan (not) in this tag."""

from __future__ import annotations

import argparse
import json
import re
from typing import Any

from worker.admin.explain import explain
from worker.admin.gated_client import admin_client
from worker.base.settings import Settings
from worker.cli.options import account_redis, add_account_option

#: What an openid looks like (WeChat's are 28 characters of these).
OPENID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")


def openid(value: str) -> str:
    """An argparse type: an openid, refused in one line if it cannot be one."""
    if not OPENID_RE.fullmatch(value):
        raise argparse.ArgumentTypeError("an openid is 1-64 letters, digits, '_' or '-'")
    return value


def register(commands: Any) -> None:
    """Add ``explain`` to the ``tagsync`` command line."""
    parser = commands.add_parser(
        "explain",
        help="why a fan is (not) in a tag: its last intent, pending, applied or dead-lettered",
        description=(
            "For each tag of the account (or --tag): the fan's last accepted intent (op, "
            "event time, source: python, jsonl or http), and whether it is pending, in a call, "
            "held by an operator, applied (when, by which call: the `call` field of the "
            "worker's `batch` log line) or dead-lettered (why). Read from Redis; the "
            "history of applied calls is kept TAGSYNC_HISTORY_HOURS (default 24). --check "
            "also asks WeChat which tags the fan carries now (one tags/getidlist call)."
        ),
    )
    add_account_option(parser)
    parser.add_argument("--openid", required=True, type=openid, metavar="OPENID")
    parser.add_argument("--tag", type=int, metavar="ID", help="only this tag")
    parser.add_argument("--check", action="store_true", help="ask WeChat for the fan's tags")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(run=_explain)


def _explain(args: argparse.Namespace) -> int:
    connection, account = account_redis(args)
    found = explain(connection, account, args.openid, args.tag)
    carried: list[int] | None = None
    if args.check:
        with admin_client(Settings.from_env(), account) as client:
            carried = client.tags_of_fan(args.openid)
    if args.json:
        report = {"account": account, "openid": args.openid, "tags": [e.as_dict() for e in found]}
        if carried is not None:
            report["wechat_tags"] = carried
        print(json.dumps(report, indent=2))
        return 0
    if not found:
        print(f"{args.openid}: no tag of {account} has had intents")
    for item in found:
        line = f"tag {item.tag_id}: {item.verdict}"
        if item.last is not None:
            last = item.last
            line += f"; last intent {last.op} from {last.source} (event time {last.ts:.3f})"
        if carried is not None:
            line += "; WeChat: " + ("in the tag" if item.tag_id in carried else "not in the tag")
        print(line)
    if carried is not None:
        print(f"WeChat says {args.openid} carries tags {sorted(carried) or 'none'}")
    return 0
