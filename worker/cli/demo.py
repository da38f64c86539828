"""``tagsync demo``: the main job on embedded defaults, nothing to set up."""

from __future__ import annotations

import argparse
from typing import Any

from fakewechat import DEFAULT_APPID, DEFAULT_SECRET, Simulator, serve_in_thread
from worker.wechat.client import WeChatClient


def register(commands: Any) -> None:
    """Add ``demo`` to the ``tagsync`` command line."""
    demo = commands.add_parser(
        "demo",
        help="run tagsync against the built-in WeChat simulator",
        description="Start the WeChat simulator and walk the client through the seven calls.",
    )
    demo.add_argument(
        "--fans", type=int, default=1000, help="fans the simulator knows (default %(default)s)"
    )
    demo.set_defaults(run=run)


def _show(step: str, answer: object) -> None:
    print(f"-> {step}\n   {answer}")


def run(args: argparse.Namespace) -> int:
    """Walk the seven calls of the seed against a fresh simulator, printing each answer."""
    server = serve_in_thread(Simulator(appid=DEFAULT_APPID, secret=DEFAULT_SECRET, fans=args.fans))
    print(f"simulator at {server.url} (appid {DEFAULT_APPID}, {args.fans} fans)")
    try:
        with WeChatClient(
            appid=DEFAULT_APPID, secret=DEFAULT_SECRET, api_base=server.url
        ) as client:
            fans = server.simulator.fans.page(0, 3)
            tag = client.create_tag("广东")
            _show("tags/create 广东", tag)
            _show("tags/get", client.list_tags())
            client.rename_tag(tag.id, "广东人")
            _show(f"tags/update {tag.id} -> 广东人", client.list_tags())
            client.batch_tag(tag.id, fans)
            _show(f"tags/members/batchtagging {len(fans)} fans", client.list_tags())
            _show(f"user/tag/get {tag.id}", client.tag_fans(tag.id))
            _show(f"tags/getidlist {fans[0]}", client.tags_of_fan(fans[0]))
            client.batch_untag(tag.id, fans[:1])
            _show(f"tags/members/batchuntagging {fans[0]}", client.tags_of_fan(fans[0]))
            client.delete_tag(tag.id)
            _show(f"tags/delete {tag.id}", client.list_tags())
    finally:
        server.shutdown()
        server.server_close()
    print("demo: PASS (seven calls answered as the seed describes)")
    return 0
