"""``tagsync tags ...`` and ``tagsync user-tags``: the seed's seven calls from the shell."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, TextIO

from worker.cli.accounts import add_account_option, admin_client
from worker.runtime.settings import Settings


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

    delete = actions.add_parser("delete", help="delete a tag (refused over 100,000 fans)")
    delete.add_argument("id", type=int)
    add_account_option(delete)
    delete.set_defaults(run=_delete)

    fans = actions.add_parser("fans", help="every fan of a tag, one openid a line")
    fans.add_argument("id", type=int)
    fans.add_argument("--out", metavar="FILE", help="write the openids to FILE instead of stdout")
    add_account_option(fans)
    fans.set_defaults(run=_fans)

    user_tags = commands.add_parser("user-tags", help="the tag ids one fan carries")
    user_tags.add_argument("openid")
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
    with admin_client(Settings.from_env(), args.account) as client:
        client.delete_tag(args.id)
    print(f"deleted tag {args.id}")
    return 0


def _fans(args: argparse.Namespace) -> int:
    out: TextIO = open(args.out, "w", encoding="utf-8") if args.out else sys.stdout  # noqa: SIM115
    count = 0
    try:
        with admin_client(Settings.from_env(), args.account) as client:
            for openid in client.iter_tag_fans(args.id):
                out.write(openid + "\n")
                count += 1
                if args.out and count % 10_000 == 0:
                    print(f"\r{count} fans...", end="", file=sys.stderr, flush=True)
    finally:
        if args.out:
            out.close()
    if args.out:
        print(f"\r{count} fans of tag {args.id} written to {args.out}", file=sys.stderr)
    return 0


def _user_tags(args: argparse.Namespace) -> int:
    with admin_client(Settings.from_env(), args.account) as client:
        tag_ids = client.tags_of_fan(args.openid)
    print(" ".join(str(t) for t in tag_ids) if tag_ids else "(no tags)")
    return 0
