"""``tagsync dlq`` (dead letters) and ``tagsync quota`` (WeChat quotas and account pauses)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from typing import Any, TextIO

import redis

import producers
from producers.intents import Intent, InvalidIntent, make_intent
from producers.redis_url import connect
from worker.accounts import Account
from worker.cli.accounts import add_account_option, open_account
from worker.dead_letters import DeadLetters
from worker.gated import AccountPaused, GatedClient
from worker.pending import PendingStore
from worker.runtime.settings import Settings, SettingsError
from worker.sweep import lift_pause


def register(commands: Any) -> None:
    """Add ``dlq`` and ``quota`` to the ``tagsync`` command line."""
    dlq = commands.add_parser("dlq", help="list, export, replay or purge dead letters")
    actions = dlq.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, help_text in (
        ("list", "show dead letters, oldest first"),
        ("export", "write dead letters as JSON lines"),
        ("replay", "enqueue dead letters again as fresh intents, and remove them"),
        ("purge", "remove dead letters"),
    ):
        action = actions.add_parser(name, help=help_text)
        action.add_argument("--errcode", type=int, help="only this WeChat errcode")
        action.add_argument("--tag", type=int, dest="tag_id", help="only this tag id")
        action.add_argument("--account", metavar="APPID", help="only this account")
        action.add_argument(
            "--reason",
            metavar="REASON",
            help="only this reason, e.g. permanent, retries_exhausted, tag_gone, unknown_tag "
            "(dlq list shows each letter's)",
        )
        if name == "list":
            action.add_argument("--json", action="store_true", help="print JSON lines")
            action.add_argument(
                "--limit",
                type=int,
                default=100,
                help="show at most this many (default %(default)s)",
            )
        if name == "export":
            action.add_argument("--out", metavar="FILE", help="write to FILE instead of stdout")
        action.set_defaults(run=globals()[f"_{name}"])

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


def _redis(settings: Settings) -> redis.Redis:
    if not settings.redis_url:
        raise SettingsError("TAGSYNC_REDIS_URL must be set")
    return connect(settings.redis_url)


def _letters(args: argparse.Namespace) -> tuple[DeadLetters, Any]:
    store = DeadLetters(_redis(Settings.from_env()))
    return store, store.scan(
        errcode=args.errcode, tag_id=args.tag_id, account=args.account, reason=args.reason
    )


def _list(args: argparse.Namespace) -> int:
    store, letters = _letters(args)
    kept = store.count()  # Redis is asked before the header: unreachable, nothing is printed
    if not args.json:
        print(
            f"{'DEAD-LETTERED':<19} {'ACCOUNT':<18} {'TAG':>6} {'OP':<5} {'OPENID':<28} "
            f"{'REASON':<17} {'ERRCODE':>7} ATTEMPTS"
        )
    shown = 0
    for entry_id, letter in letters:
        if shown >= args.limit:
            if not args.json:
                print(f"... more (of {kept} kept); use --limit or export")
            break
        shown += 1
        if args.json:
            print(json.dumps({"id": entry_id, **asdict(letter)}, ensure_ascii=False))
            continue
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(letter.dead_lettered_at))
        errcode = "" if letter.errcode is None else letter.errcode
        tag = letter.tag_name if letter.tag_id < 0 and letter.tag_name else letter.tag_id
        print(
            f"{when:<19} {letter.account or '-':<18} {tag:>6} {letter.op:<5} "
            f"{letter.openid:<28} {letter.reason:<17} {errcode:>7} {letter.attempts}"
        )
    return 0


def _export(args: argparse.Namespace) -> int:
    _, letters = _letters(args)
    out: TextIO = open(args.out, "w", encoding="utf-8") if args.out else sys.stdout  # noqa: SIM115
    count = 0
    try:
        for entry_id, letter in letters:
            out.write(json.dumps({"id": entry_id, **asdict(letter)}, ensure_ascii=False) + "\n")
            count += 1
    finally:
        if args.out:
            out.close()
    print(f"exported {count} dead letters", file=sys.stderr)
    return 0


def _replay(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    store, letters = _letters(args)
    producers.configure(redis_url=settings.redis_url)
    now = time.time()
    intents: list[Intent] = []
    ids: list[str] = []
    skipped = 0
    for entry_id, letter in letters:
        try:
            # A fresh intent: now, keeping the stream's order among the replayed ones.
            intents.append(
                make_intent(
                    letter.op,
                    letter.tag_name or letter.tag_id,  # a name resolves afresh
                    letter.openid,
                    now + len(intents) * 1e-6,
                    letter.account,
                )
            )
        except InvalidIntent:
            skipped += 1  # e.g. an invalid_intent dead letter: nothing to replay
            continue
        ids.append(entry_id)
    sent = producers.enqueue(intents)
    store.delete(ids)
    print(
        f"replayed {sent} dead letters as fresh intents"
        + (f"; {skipped} are not intents and stay" if skipped else "")
    )
    return 0


def _purge(args: argparse.Namespace) -> int:
    store, letters = _letters(args)
    removed = store.delete([entry_id for entry_id, _ in letters])
    print(f"purged {removed} dead letters")
    return 0


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
    connection = _redis(settings)
    opened = open_account(settings, args.account)
    assert isinstance(opened, Account)  # Redis is set
    opened.client.clear_quota()
    lifted = lift_pause(opened.gate, PendingStore(connection), opened.appid)
    print(
        f"quota of {opened.appid} cleared"
        + ("; the pause is lifted" if lifted else "; the account was not paused")
    )
    return 0
