"""``tagsync tags ...`` and ``tagsync user-tags``: the seed's seven calls from the shell."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import producers
from worker.admin.drain import Drain, ReservedTag
from worker.admin.export import FansExport
from worker.admin.gated_client import admin_client, notice
from worker.base.settings import Settings, SettingsError
from worker.cli.options import add_account_option
from worker.queues import queue_connection
from worker.wechat.client import RESERVED_TAG_IDS
from worker.wechat.errors import WeChatError


def register(commands: Any) -> None:
    """Add ``tags`` and ``user-tags`` to the ``tagsync`` command line."""
    tags = commands.add_parser(
        "tags", help="create, list, rename and delete tags; list a tag's fans"
    )
    actions = tags.add_subparsers(dest="action", required=True, metavar="ACTION")

    listing = actions.add_parser("list", help="every tag with its id and fan count")
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")
    add_account_option(listing)
    listing.set_defaults(run=_list)

    create = actions.add_parser("create", help="create a tag (name: 1 to 30 UTF-8 bytes)")
    create.add_argument("name")
    add_account_option(create)
    create.set_defaults(run=_create)

    rename = actions.add_parser("rename", help="rename a tag (0, 1 and 2 are reserved)")
    rename.add_argument("id", type=int)
    rename.add_argument("name")
    add_account_option(rename)
    rename.set_defaults(run=_rename)

    delete = actions.add_parser(
        "delete",
        help="delete a tag (WeChat refuses over 100,000 fans: --drain untags the surplus first)",
        description=(
            "Delete a tag. WeChat refuses a tag of over 100,000 fans (45057); with --drain, "
            "tagsync untags just enough of its fans through the workers (at the account's "
            "rate, dead letters as usual) to bring it to 99,999, then deletes it. The drain "
            "shows its progress; stopped (Ctrl-C) and run again, it continues where it was. "
            "Tags 0, 1 and 2 are WeChat's own and are refused."
        ),
    )
    delete.add_argument("id", type=int)
    delete.add_argument(
        "--drain", action="store_true", help="untag the surplus through the workers, then delete"
    )
    add_account_option(delete)
    delete.set_defaults(run=_delete)

    fans = actions.add_parser(
        "fans",
        help="every fan of a tag, one openid a line",
        description=(
            "List a tag's fans. With --out FILE the export keeps its place in FILE.cursor "
            "after every page: run the same command again after an interruption and it "
            "resumes there, with no openid missing or repeated (the cursor file is removed "
            "when the export is complete)."
        ),
    )
    fans.add_argument("id", type=int)
    fans.add_argument("--out", metavar="FILE", help="write the openids to FILE (resumable)")
    fans.add_argument(
        "--json", action="store_true", help='print {"tag_id", "openids": [...]} (stdout only)'
    )
    add_account_option(fans)
    fans.set_defaults(run=_fans)

    user_tags = commands.add_parser("user-tags", help="the tags one fan carries, with names")
    user_tags.add_argument("openid")
    user_tags.add_argument("--json", action="store_true", help="print JSON")
    add_account_option(user_tags)
    user_tags.set_defaults(run=_user_tags)


def _list(args: argparse.Namespace) -> int:
    with admin_client(Settings.from_env(), args.account) as client:
        tags = client.list_tags()
    if args.json:
        print(
            json.dumps(
                [{"id": t.id, "name": t.name, "count": t.count} for t in tags], ensure_ascii=False
            )
        )
        return 0
    print(f"{'ID':>6}  {'FANS':>9}  NAME")
    for tag in tags:
        print(f"{tag.id:>6}  {tag.count:>9}  {tag.name}")
    return 0


def _create(args: argparse.Namespace) -> int:
    with admin_client(Settings.from_env(), args.account) as client:
        tag = client.create_tag(args.name)
    print(f"created tag {tag.id} {tag.name!r}")
    return 0


def _rename(args: argparse.Namespace) -> int:
    with admin_client(Settings.from_env(), args.account) as client:
        client.rename_tag(args.id, args.name)
    print(f"renamed tag {args.id} to {args.name!r}")
    return 0


def _delete(args: argparse.Namespace) -> int:
    if args.id in RESERVED_TAG_IDS:
        raise ReservedTag(args.id)
    settings = Settings.from_env()
    with admin_client(settings, args.account) as client:
        if not args.drain:
            try:
                client.delete_tag(args.id)
            except WeChatError as exc:
                if exc.errcode == 45057:
                    notice(
                        f"tag {args.id} has over 100,000 fans: `--drain` untags the surplus first"
                    )
                raise
            print(f"deleted tag {args.id}")
            return 0
        if client.gate is None:
            raise SettingsError("--drain untags through the workers: TAGSYNC_REDIS_URL must be set")
        producers.configure(redis_url=settings.queue_url)
        queue = queue_connection(settings, client.gate.redis)
        drain = Drain(client, client.gate.redis, args.id, say=notice, queue=queue)
        try:
            untagged = drain.run()
        except KeyboardInterrupt:
            state = drain.state()
            print(
                f"tagsync: drain of tag {args.id} stopped; {state.enqueued} untag intents "
                "enqueued stay with the workers; run the same command to continue",
                file=sys.stderr,
            )
            return 130
    print(f"deleted tag {args.id} (drained: {untagged} untag intents)")
    return 0


def _fans(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    with admin_client(settings, args.account) as client:
        if args.out:
            export = FansExport(client, args.id, args.out, say=notice)
            count = export.run()
            print(f"{count} fans of tag {args.id} written to {args.out}", file=sys.stderr)
            return 0
        out = sys.stdout
        if args.json:
            out.write(f'{{"tag_id": {args.id}, "openids": [')
        for count, openid in enumerate(client.iter_tag_fans(args.id)):
            if args.json:
                out.write(("" if count == 0 else ", ") + json.dumps(openid))
            else:
                out.write(openid + "\n")
        if args.json:
            out.write("]}\n")
    return 0


def _user_tags(args: argparse.Namespace) -> int:
    with admin_client(Settings.from_env(), args.account) as client:
        tag_ids = client.tags_of_fan(args.openid)
        names = {tag.id: tag for tag in client.list_tags()} if tag_ids else {}
    rows = [
        {
            "id": tag_id,
            "name": names[tag_id].name if tag_id in names else None,
            "count": names[tag_id].count if tag_id in names else None,
        }
        for tag_id in tag_ids
    ]
    if args.json:
        print(json.dumps({"openid": args.openid, "tags": rows}, ensure_ascii=False))
        return 0
    if not rows:
        print("(no tags)")
        return 0
    print(f"{'ID':>6}  {'FANS':>9}  NAME")
    for row in rows:
        count = "-" if row["count"] is None else row["count"]
        print(f"{row['id']:>6}  {count:>9}  {row['name'] or '(not listed)'}")
    return 0
