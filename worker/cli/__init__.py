"""The ``tagsync`` command: admin calls of the tag API, the worker, producers and tools."""

from __future__ import annotations

import argparse
import sys

import redis

from worker.cli import accounts, admin, demo, dlq, produce, reconcile, run
from worker.gated import AccountPaused
from worker.observability.logs import configure_logging
from worker.runtime.settings import VARIABLES, Settings, SettingsError
from worker.wechat.errcodes import markdown_table
from worker.wechat.errors import WeChatError


def build_parser() -> argparse.ArgumentParser:
    """The whole command line of ``tagsync``."""
    variables = "\n".join(f"  {name:<26} {meaning}" for name, meaning in VARIABLES.items())
    parser = argparse.ArgumentParser(
        prog="tagsync",
        description="Keep WeChat Official Account user tags in step with application events.",
        epilog=f"environment:\n{variables}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run.register(commands)
    produce.register(commands)
    dlq.register(commands)
    admin.register(commands)
    reconcile.register(commands)
    accounts.register(commands)
    demo.register(commands)
    errcodes = commands.add_parser(
        "errcodes", help="the failure policy: what the worker does about each WeChat errcode"
    )
    errcodes.set_defaults(run=_errcodes)
    return parser


def _errcodes(args: argparse.Namespace) -> int:
    print(markdown_table())
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run one ``tagsync`` command; exit 1 on a WeChat error, 2 on bad settings or input,
    3 when the account is paused for longer than a command waits."""
    args = build_parser().parse_args(argv)
    try:
        configure_logging(Settings.from_env().log_format)
        return int(args.run(args))
    except (SettingsError, ValueError) as exc:  # bad settings or input, e.g. a long tag name
        print(f"tagsync: {exc}", file=sys.stderr)
        return 2
    except AccountPaused as exc:  # try later: nothing was spent
        print(f"tagsync: {exc}", file=sys.stderr)
        return 3
    except WeChatError as exc:
        meaning = f" ({exc.row.meaning})" if exc.errcode is not None else ""
        print(f"tagsync: {exc.call} failed{meaning}: {exc}", file=sys.stderr)
        return 1
    except redis.RedisError as exc:
        print(f"tagsync: Redis (TAGSYNC_REDIS_URL) failed: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a file that cannot be read or written, a full disk
        print(f"tagsync: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tagsync: interrupted", file=sys.stderr)
        return 130
