"""The ``fakewechat`` command: serve the simulator (one app or several, a component) on a port."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time

from fakewechat import DEFAULT_APPID, DEFAULT_SECRET
from fakewechat.component import TICKET_TTL_S, Component
from fakewechat.platform import Platform
from fakewechat.pushes import (
    DEFAULT_PUSH_AES_KEY,
    DEFAULT_PUSH_TOKEN,
    TICKET_EVERY_S,
    Pusher,
    TicketPushes,
)
from fakewechat.server import SimulatorServer
from fakewechat.simulator import Simulator


def app_spec(text: str) -> tuple[str, str]:
    """``APPID:SECRET`` as (appid, secret); the message of a bad one never shows the secret."""
    appid, colon, secret = text.partition(":")
    if not colon or not appid or not secret or any(c.isspace() for c in appid):
        raise argparse.ArgumentTypeError(
            "expected APPID:SECRET, an AppID without spaces, a colon and a non-empty secret"
        )
    return appid, secret


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``fakewechat``."""
    parser = argparse.ArgumentParser(
        prog="fakewechat",
        description=(
            "Serve a simulator of the WeChat Official Account user tag API "
            "(/cgi-bin/...) for one app or several (--app), optionally with an Open "
            "Platform third-party platform (--component), and test endpoints under "
            "/_sim/ (?appid=A picks the app; the first one without it)."
        ),
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s)")
    parser.add_argument(
        "--port",
        type=int,
        default=8089,
        help="port to bind; 0 picks a free one (default %(default)s)",
    )
    parser.add_argument(
        "--appid",
        default=os.environ.get("WECHAT_APPID", DEFAULT_APPID),
        help="the first app's AppID, the one test endpoints mean without ?appid= "
        "(default $WECHAT_APPID or %(default)s)",
    )
    parser.add_argument(
        "--secret",
        default=None,
        help="the first app's secret (default $WECHAT_SECRET or the built-in demo secret)",
    )
    parser.add_argument(
        "--app",
        dest="apps",
        metavar="APPID:SECRET",
        type=app_spec,
        action="append",
        default=[],
        help="another app served after the first one (repeatable)",
    )
    parser.add_argument(
        "--component",
        metavar="APPID:SECRET",
        type=app_spec,
        default=None,
        help="a WeChat Open Platform third-party platform the apps can authorize "
        "(/cgi-bin/component/..., /_sim/ticket, /_sim/authorize)",
    )
    parser.add_argument(
        "--push-url",
        metavar="URL",
        default=None,
        help="push as WeChat does: component events to URL/component, a fan's events to "
        "URL/<appid> (tagsync's ingest: http://HOST:PORT/v1/wechat)",
    )
    parser.add_argument(
        "--push-token",
        default=DEFAULT_PUSH_TOKEN,
        help="the token pushes are signed with (default: the demo's)",
    )
    parser.add_argument(
        "--push-aes-key",
        default=DEFAULT_PUSH_AES_KEY,
        metavar="KEY",
        help="the EncodingAESKey pushes are sealed with, 43 characters (default: the demo's)",
    )
    parser.add_argument(
        "--ticket-every",
        type=float,
        default=TICKET_EVERY_S,
        metavar="S",
        help="with --push-url and --component: push a component_verify_ticket every S "
        "seconds (default %(default)g, WeChat's 10 minutes; 0: never)",
    )
    parser.add_argument(
        "--ticket-count",
        type=int,
        default=0,
        metavar="N",
        help="stop pushing tickets after N (default 0: never stop), as when WeChat's pushes "
        "stop reaching the platform",
    )
    parser.add_argument(
        "--ticket-ttl",
        type=float,
        default=TICKET_TTL_S,
        metavar="S",
        help="how long a ticket stays valid, s (default %(default)g, WeChat's 12 hours); "
        "api_component_token answers 61005 for an older one",
    )
    parser.add_argument(
        "--fans",
        type=int,
        default=1000,
        help="deterministic fans each app starts with, openids of its own prefix "
        "(default %(default)s)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the openids and the fault dice (default %(default)s)",
    )
    return parser


def _interrupt(signum: int, frame: object) -> None:
    # SIGTERM ends serve_forever the same way Ctrl-C does.
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """Run the simulator until SIGINT or SIGTERM."""
    args = build_parser().parse_args(argv)
    if args.fans < 0:
        print("fakewechat: --fans must be 0 or more", file=sys.stderr)
        return 2
    if args.ticket_count < 0 or not args.ticket_ttl > 0:
        print("fakewechat: --ticket-count must be 0 or more, --ticket-ttl over 0", file=sys.stderr)
        return 2
    secret = args.secret or os.environ.get("WECHAT_SECRET") or DEFAULT_SECRET
    specs: list[tuple[str, str]] = [(args.appid, secret), *args.apps]
    appids = [appid for appid, _ in specs]
    if args.component is not None:
        appids.append(args.component[0])
    repeated = sorted({appid for appid in appids if appids.count(appid) > 1})
    if repeated:
        print(f"fakewechat: AppID given twice: {', '.join(repeated)}", file=sys.stderr)
        return 2
    started = time.monotonic()
    apps = [
        Simulator(appid=appid, secret=app_secret, fans=args.fans, seed=args.seed)
        for appid, app_secret in specs
    ]
    component = None
    if args.component is not None:
        component = Component(
            appid=args.component[0], secret=args.component[1], ticket_ttl_s=args.ticket_ttl
        )
    pusher = None
    if args.push_url:
        try:
            pusher = Pusher(
                url=args.push_url,
                token=args.push_token,
                aes_key=args.push_aes_key,
                component_appid=component.appid if component else None,
            )
        except ValueError as exc:
            print(f"fakewechat: {exc}", file=sys.stderr)
            return 2
    platform = Platform(apps, component=component, pusher=pusher)
    if pusher is not None and component is not None and args.ticket_every > 0:
        TicketPushes(
            pusher, component.issue_ticket, every_s=args.ticket_every, count=args.ticket_count
        ).start()
    try:
        server = SimulatorServer((args.host, args.port), platform)
    except OSError as exc:
        print(
            f"fakewechat: cannot listen on {args.host}:{args.port}: {exc.strerror}", file=sys.stderr
        )
        return 1
    signal.signal(signal.SIGTERM, _interrupt)
    print(
        f"fakewechat listening on {server.url} appid={args.appid} fans={args.fans} "
        f"apps={len(apps)} component={component.appid if component else 'off'} "
        f"(ready in {time.monotonic() - started:.2f}s)",
        flush=True,
    )
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
