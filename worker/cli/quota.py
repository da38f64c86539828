"""``tagsync quota``: WeChat's daily quotas and tagsync's budget; lift a quota pause."""

from __future__ import annotations

import argparse
import time
from typing import Any

from producers.redis_url import connect
from worker.accounts import Account
from worker.admin.gated_client import AccountPaused, GatedClient, open_account
from worker.base.settings import Settings
from worker.cli.options import add_account_option
from worker.pending import PendingStore
from worker.queues import queue_connection
from worker.sweep import lift_pause


def register(commands: Any) -> None:
    """Add ``quota`` to the ``tagsync`` command line."""
    quota = commands.add_parser("quota", help="WeChat's daily quotas; lift a quota pause")
    quota_actions = quota.add_subparsers(dest="action", required=True, metavar="ACTION")
    get = quota_actions.add_parser(
        "get", help="daily limit and use of the tagging calls, budget, pause"
    )
    add_account_option(get)
    get.set_defaults(run=_quota_get)
    reset = quota_actions.add_parser(
        "reset", help="call clear_quota, lift the account's pause and reset today's budget count"
    )
    add_account_option(reset)
    reset.set_defaults(run=_quota_reset)


def _quota_get(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    opened = open_account(settings, args.account)
    client = opened.client if isinstance(opened, Account) else opened
    gated = GatedClient(client, opened.gate if isinstance(opened, Account) else None)
    try:
        for path in ("/cgi-bin/tags/members/batchtagging", "/cgi-bin/tags/members/batchuntagging"):
            quota = gated.get_quota(path)
            print(f"{path}: {quota.used} of {quota.daily_limit} used today, {quota.remain} left")
    except AccountPaused as exc:  # the pause itself is what is worth showing, below
        print(f"WeChat's quota not asked: {exc}")
    if isinstance(opened, Account):
        gate = opened.gate
        budget = gate.daily_budget or "no"
        print(
            f"tagsync budget: {gate.budget_used(client.appid)} calls counted today, {budget} budget"
        )
        for scope, pause in gate.pauses(client.appid).items():
            until = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(pause.until))
            what = "the account" if scope == "account" else scope
            print(
                f"paused: {what} ({pause.reason}, errcode {pause.errcode or '-'}) "
                f"until {until}: {pause.message}"
            )
    return 0


def _quota_reset(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    connection = connect(settings.require_redis_url())
    opened = open_account(settings, args.account)
    assert isinstance(opened, Account)  # Redis is set
    opened.client.clear_quota()
    queue = queue_connection(settings, connection)
    lifted = lift_pause(opened.gate, PendingStore(connection), opened.appid, queue)
    print(
        f"quota of {opened.appid} cleared"
        + ("; the pause is lifted" if lifted else "; the account was not paused")
    )
    return 0
