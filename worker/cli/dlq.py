"""``tagsync dlq``: list, export, replay or purge dead letters, filtered."""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from typing import Any, TextIO

import producers
from producers.intents import Intent, InvalidIntent, make_intent
from producers.redis_url import connect
from worker.base.settings import Settings
from worker.dead_letters import DeadLetters


def register(commands: Any) -> None:
    """Add ``dlq`` to the ``tagsync`` command line."""
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


def _letters(args: argparse.Namespace) -> tuple[DeadLetters, Any]:
    store = DeadLetters(connect(Settings.from_env().require_redis_url()))
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
    producers.configure(redis_url=settings.queue_url)
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
