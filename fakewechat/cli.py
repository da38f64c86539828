"""The ``fakewechat`` command: serve the simulator on a port."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time

from fakewechat import DEFAULT_APPID, DEFAULT_SECRET
from fakewechat.server import SimulatorServer
from fakewechat.simulator import Simulator


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``fakewechat``."""
    parser = argparse.ArgumentParser(
        prog="fakewechat",
        description=(
            "Serve a simulator of the WeChat Official Account user tag API "
            "(/cgi-bin/...) with test endpoints under /_sim/."
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
        help="the AppID served (default $WECHAT_APPID or %(default)s)",
    )
    parser.add_argument(
        "--secret",
        default=None,
        help="the app secret accepted (default $WECHAT_SECRET or the built-in demo secret)",
    )
    parser.add_argument(
        "--fans",
        type=int,
        default=1000,
        help="deterministic fans to start with (default %(default)s)",
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
    secret = args.secret or os.environ.get("WECHAT_SECRET") or DEFAULT_SECRET
    started = time.monotonic()
    simulator = Simulator(appid=args.appid, secret=secret, fans=args.fans, seed=args.seed)
    try:
        server = SimulatorServer((args.host, args.port), simulator)
    except OSError as exc:
        print(
            f"fakewechat: cannot listen on {args.host}:{args.port}: {exc.strerror}", file=sys.stderr
        )
        return 1
    signal.signal(signal.SIGTERM, _interrupt)
    print(
        f"fakewechat listening on {server.url} appid={args.appid} fans={args.fans} "
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
