"""``tagsync accounts ...`` and ``tagsync component ticket``: the accounts a deployment serves,
and the helpers every command uses to pick one (``--account``)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import redis

from producers.redis_url import connect
from worker.accounts import AccountsConfig, accounts_config
from worker.accounts.authorize import authorize_account, lift_revoked
from worker.accounts.authorized import AuthorizedAccounts
from worker.accounts.purge import purge_account
from worker.base.settings import Settings, SettingsError
from worker.dead_letters import DeadLetters
from worker.pending import PendingStore
from worker.queues import queue_connection


def register(commands: Any) -> None:
    """Add ``accounts`` and ``component`` to the ``tagsync`` command line."""
    accounts = commands.add_parser(
        "accounts",
        help="the accounts served; Open Platform authorizations (add, remove, export, import)",
    )
    actions = accounts.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="every account served, how its tokens are had")
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(run=_list)

    authorize = actions.add_parser(
        "authorize",
        help="add (or renew) an account authorized to the component, by its refresh token",
    )
    authorize.add_argument("appid")
    authorize.add_argument(
        "--refresh-token",
        required=True,
        metavar="T",
        help="the authorizer_refresh_token WeChat gave at authorization ('-' reads stdin)",
    )
    authorize.set_defaults(run=_authorize)

    remove = actions.add_parser(
        "remove", help="stop serving an authorized account (its pending intents are kept)"
    )
    remove.add_argument("appid")
    remove.add_argument("--purge", action="store_true", help="also dead-letter its pending intents")
    remove.set_defaults(run=_remove)

    purge = actions.add_parser(
        "purge", help="dead-letter every pending intent of an account (reason account_purged)"
    )
    purge.add_argument("appid")
    purge.set_defaults(run=_purge)

    export = actions.add_parser(
        "export", help="write every authorization with its refresh token (file mode 0600)"
    )
    export.add_argument("file", nargs="?", help="the file (default: stdout)")
    export.set_defaults(run=_export)

    restore = actions.add_parser("import", help="restore authorizations from an export")
    restore.add_argument("file")
    restore.add_argument(
        "--overwrite",
        action="store_true",
        help="replace refresh tokens of accounts already here (theirs may be newer)",
    )
    restore.set_defaults(run=_import)

    component = commands.add_parser(
        "component", help="the Open Platform component: hand over component_verify_ticket"
    )
    component_actions = component.add_subparsers(dest="action", required=True, metavar="ACTION")
    ticket = component_actions.add_parser(
        "ticket", help="store the latest component_verify_ticket WeChat pushed"
    )
    ticket.add_argument("ticket", help="the ticket ('-' reads stdin)")
    ticket.set_defaults(run=_ticket)


def _store(settings: Settings) -> tuple[AccountsConfig, AuthorizedAccounts, redis.Redis]:
    config = accounts_config(settings)
    connection = connect(settings.require_redis_url("(authorizations live in Redis)"))
    return config, AuthorizedAccounts(connection), connection


def _read_secret(value: str) -> str:
    return sys.stdin.readline().strip() if value == "-" else value


def _authorize(args: argparse.Namespace) -> int:
    config, _, connection = _store(Settings.from_env())
    if config.component is None:
        raise SettingsError("no [component] in TAGSYNC_ACCOUNTS: nothing can be authorized to it")
    queue = queue_connection(Settings.from_env(), connection)
    added = authorize_account(connection, args.appid, _read_secret(args.refresh_token), queue)
    print(f"{'authorized' if added else 'renewed the authorization of'} {args.appid}")
    return 0


def _remove(args: argparse.Namespace) -> int:
    _, authorized, connection = _store(Settings.from_env())
    if not authorized.remove(args.appid):
        raise ValueError(f"{args.appid} is not an authorized account")
    pending = _pending(connection, args.appid)
    if args.purge:
        purged = purge_account(PendingStore(connection), DeadLetters(connection), args.appid)
        print(f"removed {args.appid}; {purged} pending intents dead-lettered (account_purged)")
    elif pending:
        print(
            f"removed {args.appid}; its {pending} pending intents are kept until it is "
            f"authorized again or `tagsync accounts purge {args.appid}`"
        )
    else:
        print(f"removed {args.appid}")
    return 0


def _pending(connection: redis.Redis, appid: str) -> int:
    return sum(t.unsettled for t in PendingStore(connection).status() if t.account == appid)


def _purge(args: argparse.Namespace) -> int:
    _, _, connection = _store(Settings.from_env())
    purged = purge_account(PendingStore(connection), DeadLetters(connection), args.appid)
    print(f"{purged} pending intents of {args.appid} dead-lettered (account_purged)")
    return 0


def _list(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    config = accounts_config(settings)
    rows: list[dict[str, Any]] = [
        {
            "appid": a.appid,
            "source": config.source,
            "tokens": "secret",
            "rate": a.limits.rate,
            "burst": a.limits.burst,
            "daily_budget": a.limits.daily_budget,
        }
        for a in config.accounts
    ]
    if settings.redis_url:
        connection = connect(settings.redis_url)
        configured = {a.appid for a in config.accounts}
        for entry in AuthorizedAccounts(connection).list():
            if entry.appid in configured:
                continue
            rows.append(
                {
                    "appid": entry.appid,
                    "source": "authorized",
                    "tokens": "component" if config.component else "none: no [component]",
                    "rate": config.defaults.rate,
                    "burst": config.defaults.burst,
                    "daily_budget": config.defaults.daily_budget,
                    "authorized_at": entry.added,
                    "refresh_token_rotated_at": entry.rotated_at,
                }
            )
    if args.json:
        print(json.dumps(rows))
        return 0
    print(f"{'APPID':<34} {'SOURCE':<12} {'TOKENS':<10} {'RATE':>6}  BUDGET")
    for row in rows:
        print(
            f"{row['appid']:<34} {row['source'][:12]:<12} {row['tokens'][:10]:<10} "
            f"{row['rate']:>6g}  {row['daily_budget'] or '-'}"
        )
    print(f"{len(rows)} accounts")
    return 0


def _export(args: argparse.Namespace) -> int:
    _, authorized, _ = _store(Settings.from_env())
    document = authorized.export()
    text = json.dumps(document, indent=1)
    if args.file:
        # Created 0600 before anything is written: the refresh tokens are credentials.
        fd = os.open(args.file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text + "\n")
        print(f"{len(document['accounts'])} authorizations written to {args.file}", file=sys.stderr)
    else:
        print(text)
    return 0


def _import(args: argparse.Namespace) -> int:
    _, authorized, connection = _store(Settings.from_env())
    try:
        with open(args.file, encoding="utf-8") as source:
            document = json.load(source)
    except OSError as exc:
        raise ValueError(f"cannot read {args.file}: {exc.strerror}") from None
    except ValueError:
        raise ValueError(f"{args.file} is not JSON") from None
    imported, skipped = authorized.import_(document, overwrite=args.overwrite)
    queue = queue_connection(Settings.from_env(), connection)
    for entry in document["accounts"]:
        lift_revoked(connection, entry["appid"], queue)
    print(
        f"{imported} authorizations imported"
        + (f", {skipped} kept as they are (--overwrite replaces them)" if skipped else "")
    )
    return 0


def _ticket(args: argparse.Namespace) -> int:
    config, authorized, _ = _store(Settings.from_env())
    if config.component is None:
        raise SettingsError("no [component] in TAGSYNC_ACCOUNTS")
    authorized.set_ticket(_read_secret(args.ticket))
    print(f"component_verify_ticket stored ({time.strftime('%H:%M:%S')})")
    return 0
