"""The ``tagsync`` command: admin calls of the tag API, the worker, producers and tools."""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import UTC, datetime
from importlib import metadata

import redis

# _extra before anything of the worker's: one clear line, not a traceback, when the worker
# extra is not installed (the imports below need structlog and the rest).
from worker.cli import _extra  # noqa: F401

# isort: split
from worker.admin.gated_client import AccountPaused
from worker.base.settings import VARIABLES, Settings, SettingsError
from worker.cli import (
    accounts,
    demo,
    dev,
    dlq,
    explain,
    limits,
    pause,
    produce,
    quota,
    reconcile,
    status,
    tags,
    worker,
)
from worker.observability.logs import configure_logging
from worker.observability.redaction import REDACTOR
from worker.wechat.errcodes import markdown_table
from worker.wechat.errors import NetworkError, WeChatError


def build_parser() -> argparse.ArgumentParser:
    """The whole command line of ``tagsync``."""
    variables = "\n".join(f"  {name:<26} {meaning}" for name, meaning in VARIABLES.items())
    parser = argparse.ArgumentParser(
        prog="tagsync",
        description="Keep WeChat Official Account user tags in step with application events.",
        epilog=f"environment:\n{variables}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--version", action="version", version=f"tagsync {metadata.version('wechat-tagsync')}"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    operate = (worker, status, pause, limits, explain, produce, dlq, quota, tags, reconcile)
    for command in (*operate, accounts, demo, dev):
        command.register(commands)
    errcodes = commands.add_parser(
        "errcodes", help="the failure policy: what the worker does about each WeChat errcode"
    )
    errcodes.set_defaults(run=_errcodes)
    return parser


def _errcodes(args: argparse.Namespace) -> int:
    print(markdown_table())
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run one ``tagsync`` command; exit 1 on a WeChat error, 2 on bad settings or input, on
    Redis or WeChat unreachable, 3 when the account is paused for longer than a command waits."""
    args = build_parser().parse_args(argv)
    # A service's (worker, ingest) last words are a log line like its others: JSON when its
    # logs are, so a log pipeline takes them; a command's are a message for whoever ran it.
    as_log = getattr(args, "service", False) and _log_format() == "json"
    try:
        configure_logging(Settings.from_env().log_format)
        return int(args.run(args))
    except (SettingsError, ValueError) as exc:  # bad settings or input, e.g. a long tag name
        return _fail(2, str(exc), as_log)
    except AccountPaused as exc:  # try later: nothing was spent
        return _fail(3, str(exc), as_log)
    except NetworkError as exc:  # WeChat (or the network to it) is down: not a bad request
        return _fail(2, f"WeChat unreachable: {exc}", as_log)
    except WeChatError as exc:
        meaning = f" ({exc.row.meaning})" if exc.errcode is not None else ""
        return _fail(1, f"{exc.call} failed{meaning}: {exc}", as_log)
    except redis.RedisError as exc:
        return _fail(2, f"Redis (TAGSYNC_REDIS_URL) failed: {exc}", as_log)
    except OSError as exc:  # a file that cannot be read or written, a full disk
        return _fail(2, str(exc), as_log)
    except KeyboardInterrupt:
        return _fail(130, "interrupted", as_log)


def _log_format() -> str:
    """The log format in force, even when the settings themselves are what failed."""
    chosen = os.environ.get("TAGSYNC_LOG_FORMAT", "").strip()
    return (
        chosen if chosen in ("json", "console") else ("console" if sys.stderr.isatty() else "json")
    )


def _fail(code: int, message: str, as_log: bool) -> int:
    if as_log:
        line = {
            "event": "tagsync.exit",
            "error": REDACTOR.redact(message),
            "exit_code": code,
            "level": "error",
            "timestamp": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        }
        print(json.dumps(line, ensure_ascii=False), file=sys.stderr, flush=True)
    else:
        print(f"tagsync: {message}", file=sys.stderr)
    return code
