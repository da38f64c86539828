"""``tagsync produce`` (JSON lines) and ``tagsync ingest`` (the HTTP ingest server)."""

from __future__ import annotations

import argparse
import json
import socketserver
import sys
from typing import Any, BinaryIO, TextIO
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import structlog

import producers
from producers.intents import Intent, InvalidIntent, parse_intent
from worker.base.settings import Settings, SettingsError

log = structlog.get_logger("tagsync.ingest")

#: Lines between two progress reports.
PROGRESS_EVERY = 100_000
#: Most bad lines reported before giving up on the file.
MAX_REPORTED_ERRORS = 20


def register(commands: Any) -> None:
    """Add ``produce`` and ``ingest`` to the ``tagsync`` command line."""
    produce = commands.add_parser(
        "produce",
        help="enqueue intents from JSON lines",
        description=(
            'Enqueue intents from JSON lines: one {"op", "tag_id", "openid", "ts"?, "account"?} '
            "per line. Every line is checked first; if any is bad, each bad line is reported "
            "with its number and nothing is enqueued."
        ),
    )
    produce.add_argument(
        "file", nargs="?", default="-", help="the file, or - for standard input (default)"
    )
    produce.add_argument("--dry-run", action="store_true", help="check the lines, enqueue nothing")
    produce.set_defaults(run=run_produce)

    ingest = commands.add_parser(
        "ingest",
        help="serve the HTTP ingest (POST /v1/intents)",
        description="Serve producers.wsgi:app for development; in production use gunicorn.",
    )
    ingest.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s)")
    ingest.add_argument("--port", type=int, default=8080, help="port (default %(default)s)")
    ingest.set_defaults(run=run_ingest, service=True)


def _parse_line(raw: bytes) -> Intent | None:
    """The intent on one line (None for a blank line); ``InvalidIntent`` says what is wrong."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidIntent("line", f"not UTF-8 (byte {exc.start + 1})") from None
    if not text.strip():
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidIntent("line", f"not JSON ({exc.msg})") from None
    except (ValueError, RecursionError) as exc:  # a number of over 4,300 digits; deep nesting
        raise InvalidIntent("line", f"not readable JSON ({type(exc).__name__})") from None
    return parse_intent(value)


def read_intents(stream: BinaryIO, progress: TextIO) -> tuple[list[Intent], list[str]]:
    """Check every JSON line; return the intents and the error reports (line numbers)."""
    intents: list[Intent] = []
    errors: list[str] = []
    number = 0
    for number, raw in enumerate(stream, start=1):
        try:
            intent = _parse_line(raw)
        except InvalidIntent as exc:
            reason = exc.message if exc.field == "line" else str(exc)
            errors.append(f"line {number}: {reason}")
            if len(errors) >= MAX_REPORTED_ERRORS:
                errors.append(f"stopped after {MAX_REPORTED_ERRORS} bad lines")
                break
        else:
            if intent is not None:
                intents.append(intent)
        if number % PROGRESS_EVERY == 0:
            print(f"checked {number} lines...", file=progress, flush=True)
    return intents, errors


def run_produce(args: argparse.Namespace) -> int:
    """Check a JSON-lines file and enqueue it whole, or report its bad lines."""
    # Bytes, so that a line that is not UTF-8 is reported with its number.
    try:
        stream = sys.stdin.buffer if args.file == "-" else open(args.file, "rb")  # noqa: SIM115
    except OSError as exc:
        raise SettingsError(f"cannot read {args.file}: {exc.strerror}") from None
    try:
        intents, errors = read_intents(stream, sys.stderr)
    finally:
        if stream is not sys.stdin.buffer:
            stream.close()
    if errors:
        for error in errors:
            print(f"tagsync produce: {error}", file=sys.stderr)
        print("tagsync produce: nothing enqueued", file=sys.stderr)
        return 2
    if args.dry_run:
        print(f"{len(intents)} intents are valid (dry run: nothing enqueued)")
        return 0
    settings = Settings.from_env()
    producers.configure(redis_url=settings.require_queue_url())
    sent = 0
    step = 10 * PROGRESS_EVERY
    for start in range(0, len(intents), step):
        sent += producers.enqueue(intents[start : start + step], source="jsonl")
        if len(intents) > step:
            print(f"enqueued {sent}/{len(intents)}...", file=sys.stderr, flush=True)
    print(f"enqueued {sent} intents")
    return 0


class _ThreadingWSGIServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass  # access logs would print every request; gunicorn is the production server


def run_ingest(args: argparse.Namespace) -> int:
    """Serve the HTTP ingest until interrupted."""
    settings = Settings.from_env()
    settings.require_ingest()
    assert settings.redis_url is not None and settings.ingest_token is not None
    from worker.http import DeploymentApp

    producers.configure(redis_url=settings.queue_url)
    app = DeploymentApp(token=settings.ingest_token.reveal(), settings=settings)
    server = make_server(
        args.host, args.port, app, server_class=_ThreadingWSGIServer, handler_class=_QuietHandler
    )
    log.info("ingest.listening", url=f"http://{args.host}:{server.server_port}")
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
    return 0
