"""``tagsync reconcile``: make a tag's fans what a file says, through the pipeline.

    1. the tag          ``tags/get``: ``--tag ID`` must exist; ``--name`` gives its id
    2. the desired side FILE, checked line by line into a ``SortedRuns`` (nothing is sent
                        if a line is bad)
    3. the listed side  ``user/tag/get`` pages into another ``SortedRuns``
    4. the difference   ``Diff`` of the two sorted streams, sent as tag/untag intents
                        stamped now, 1,000 a message (or only counted with --dry-run)

The sorting and the walk are ``worker/admin/sorted_diff.py``; here are WeChat, Redis and the output.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, TextIO

import producers
from producers.intents import MAX_INTENTS_PER_MESSAGE, Op
from producers.redis_url import connect
from worker.admin.gated_client import GatedClient, admin_client
from worker.admin.progress import Progress
from worker.admin.sorted_diff import CHUNK_SIZE, BadLines, Change, Diff, SortedRuns, read_desired
from worker.base.settings import Settings, SettingsError
from worker.cli.options import add_account_option
from worker.pending import PendingStore
from worker.wechat.client import RESERVED_TAG_IDS, Tag

#: Fans listed between two progress updates.
PROGRESS_FANS = 10_000

DESCRIPTION = """\
Make the fans of one tag exactly the openids of FILE.

FILE holds the openids that should carry the tag, one a line ('-' reads standard
input); blank lines, surrounding whitespace and lines starting with '#' are ignored.
Every line is checked before anything is sent: if one is not an openid, the bad lines
are reported by number and nothing is enqueued.

The fans WeChat lists for the tag (user/tag/get) are compared with FILE:
  in FILE, not listed   -> a "tag" intent
  listed, not in FILE   -> an "untag" intent
  in both               -> unchanged, nothing sent
Listing takes one call per 10,000 fans, paced like every admin call by the
account's rate. The intents are stamped now and go through the queue like any
producer's: the worker applies them at the account's rate (TAGSYNC_RATE), in
batches of 50, with its retries and dead letters. An intent stamped later (by the application) still
wins over them. Intents of the tag not yet applied are not in WeChat's listing:
reconcile when the tag's backlog is empty (tagsync status), or run it again after.

Both sides are sorted on disk in runs of {chunk:,} openids (in a temporary
directory, TMPDIR), so memory stays the same for any size of tag or file.
--dry-run reads both sides and prints the counts, and changes nothing."""


def register(commands: Any) -> None:
    """Add ``reconcile`` to the ``tagsync`` command line."""
    parser = commands.add_parser(
        "reconcile",
        help="make a tag's fans the openids of a file (tag/untag intents for the difference)",
        description=DESCRIPTION.format(chunk=CHUNK_SIZE),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--tag", type=int, metavar="ID", help="the tag, by id")
    which.add_argument("--name", metavar="NAME", help="the tag, by name")
    parser.add_argument(
        "--from",
        dest="source",
        required=True,
        metavar="FILE",
        help="the openids that should carry the tag, one a line ('-' for standard input)",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="read both sides, print the counts, enqueue nothing"
    )
    parser.add_argument(
        "--create",
        action="store_true",
        help="with --name: create the tag if it does not exist (it has no fans yet)",
    )
    parser.add_argument(
        "--allow-empty",
        action="store_true",
        help="accept a FILE without openids (it untags every fan of the tag)",
    )
    parser.add_argument(
        "--show", type=int, default=0, metavar="N", help="also print up to N openids of each side"
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    add_account_option(parser)
    parser.set_defaults(run=run_reconcile)


@dataclass
class Outcome:
    """What a reconcile found and did."""

    tag_id: int | None
    account: str
    to_tag: int = 0
    to_untag: int = 0
    unchanged: int = 0
    enqueued: int = 0
    dry_run: bool = False
    desired_lines: int = 0
    listed: int = 0
    pending_before: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=lambda: {"tag": [], "untag": []})

    def document(self, show: int) -> dict[str, Any]:
        """The ``--json`` output."""
        document: dict[str, Any] = {
            "to_tag": self.to_tag,
            "to_untag": self.to_untag,
            "unchanged": self.unchanged,
            "enqueued": self.enqueued,
            "dry_run": self.dry_run,
            "tag_id": self.tag_id,
            "account": self.account,
            "desired_lines": self.desired_lines,
            "listed": self.listed,
            "pending_before": self.pending_before,
            "timings": {k: round(v, 3) for k, v in self.timings.items()},
        }
        if show:
            document["examples"] = self.examples
        return document


def run_reconcile(args: argparse.Namespace) -> int:
    """Read FILE and the tag's fans, then enqueue (or with --dry-run count) the difference."""
    if args.create and args.name is None:
        raise SettingsError("--create goes with --name")
    if args.tag is not None and args.tag in RESERVED_TAG_IDS:
        raise ValueError(
            f"tag {args.tag} is one of WeChat's reserved tags (0, 1, 2): it cannot be reconciled"
        )
    settings = Settings.from_env()
    if not args.dry_run:
        settings.require_redis_url("(or pass --dry-run)")
    source = _open(args.source)
    started = time.monotonic()
    progress = Progress(sys.stderr)
    try:
        with (
            admin_client(settings, args.account) as client,
            tempfile.TemporaryDirectory(prefix="tagsync-reconcile-") as spill,
        ):
            tag = _find_tag(client, args)
            outcome = Outcome(tag.id if tag else None, client.appid, dry_run=args.dry_run)
            outcome.timings["tag_s"] = time.monotonic() - started

            # The whole file is checked before WeChat is asked for a single page.
            phase = time.monotonic()
            desired = SortedRuns(spill, name="desired")
            try:
                outcome.desired_lines = read_desired(
                    source,
                    desired,
                    progress=lambda lines: progress.show(f"read {lines:,} lines of {args.source}"),
                )
            except BadLines as bad:
                return _report_bad_lines(bad, args.source)
            progress.done(f"read {outcome.desired_lines:,} lines of {args.source}")
            outcome.timings["read_s"] = time.monotonic() - phase

            if desired.added == 0 and not args.allow_empty and not args.dry_run:
                fans = tag.count if tag else 0
                raise ValueError(
                    f"{args.source} holds no openids: that would untag all {fans} fans of "
                    "the tag. Pass --allow-empty if that is what you mean"
                )
            if tag is None and not args.dry_run:
                tag = client.create_tag(args.name)
                outcome.tag_id = tag.id
                print(f"created tag {tag.id} {tag.name!r}", file=sys.stderr)

            phase = time.monotonic()
            listed = SortedRuns(spill, name="listed")
            if tag is not None:  # even at a count of 0: tags/get's count may lag
                _list_fans(client, tag, listed, progress)
            outcome.listed = listed.added
            outcome.timings["fetch_s"] = time.monotonic() - phase

            if not args.dry_run and settings.redis_url:
                outcome.pending_before = _pending(settings.redis_url, client.appid, tag)
            phase = time.monotonic()
            diff = Diff(desired, listed)
            changes = _examples(diff, outcome.examples, args.show)
            if args.dry_run or tag is None:
                for _ in changes:
                    pass
            else:
                assert settings.redis_url is not None
                producers.configure(redis_url=settings.queue_url)
                outcome.enqueued, outcome.timings["enqueue_s"] = _enqueue(
                    changes, tag_id=tag.id, account=client.appid, progress=progress
                )
                progress.done(f"enqueued {outcome.enqueued:,} intents")
            outcome.to_tag, outcome.to_untag = diff.to_tag, diff.to_untag
            outcome.unchanged = diff.unchanged
            outcome.timings["diff_s"] = (
                time.monotonic() - phase - outcome.timings.get("enqueue_s", 0.0)
            )
    finally:
        if args.source != "-":
            source.close()
    outcome.timings["total_s"] = time.monotonic() - started
    _print(outcome, args)
    return 0


def _open(path: str) -> TextIO:
    """FILE as text: a BOM is skipped, bytes that are not UTF-8 fail their line's check."""
    if path == "-":
        return io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8-sig", errors="replace")
    try:
        return open(path, encoding="utf-8-sig", errors="replace")
    except OSError as exc:
        raise SettingsError(f"cannot read {path}: {exc.strerror}") from None


def _find_tag(client: GatedClient, args: argparse.Namespace) -> Tag | None:
    """The tag from ``tags/get``; None for a --name to create (--create)."""
    tags = client.list_tags()
    if args.tag is not None:
        for tag in tags:
            if tag.id == args.tag:
                return tag
        raise ValueError(
            f"tag {args.tag} does not exist on account {client.appid} (see `tagsync tags list`)"
        )
    matches = [tag for tag in tags if tag.name == args.name]
    if matches:
        tag = matches[0]
        if tag.id in RESERVED_TAG_IDS:
            raise ValueError(f"{args.name!r} is WeChat's reserved tag {tag.id}: not reconciled")
        return tag
    if args.create:
        return None
    raise ValueError(
        f"no tag named {args.name!r} on account {client.appid}: create it with "
        f"`tagsync tags create {args.name}`, or pass --create"
    )


def _list_fans(client: GatedClient, tag: Tag, into: SortedRuns, progress: Progress) -> None:
    """Every fan WeChat lists for the tag, page after page, into ``into``."""
    for count, openid in enumerate(client.iter_tag_fans(tag.id), start=1):
        into.add(openid)
        if count % PROGRESS_FANS == 0:
            progress.show(f"listed {count:,} of about {tag.count:,} fans of tag {tag.id}")
    progress.done(f"listed {into.added:,} fans of tag {tag.id}")


def _pending(redis_url: str, account: str, tag: Tag | None) -> int:
    """Intents of the tag in the pipeline and not yet applied (WeChat does not list them)."""
    if tag is None:
        return 0
    connection = connect(redis_url)
    try:
        return PendingStore(connection).unsettled(account, tag.id)
    finally:
        connection.close()


def _examples(
    changes: Iterable[Change], examples: dict[str, list[str]], show: int
) -> Iterable[Change]:
    """``changes`` as they are, keeping the first ``show`` openids of each op."""
    if show <= 0:
        yield from changes
        return
    for change in changes:
        kept = examples[change.op]
        if len(kept) < show:
            kept.append(change.openid)
        yield change


def _enqueue(
    changes: Iterable[Change], *, tag_id: int, account: str, progress: Progress
) -> tuple[int, float]:
    """Send the changes as intents stamped now, a message per 1,000 of one op; return how
    many and the seconds spent sending."""
    stamp = time.time()
    waiting: dict[Op, list[str]] = {"tag": [], "untag": []}
    sent = 0
    sending = 0.0

    def send(op: Op) -> None:
        nonlocal sent, sending
        started = time.monotonic()
        call = producers.tag if op == "tag" else producers.untag
        sent += call(tag_id, waiting[op], ts=stamp, account=account)
        waiting[op] = []
        sending += time.monotonic() - started
        progress.show(f"enqueued {sent:,} intents")

    for change in changes:
        waiting[change.op].append(change.openid)
        if len(waiting[change.op]) >= MAX_INTENTS_PER_MESSAGE:
            send(change.op)
    for op in ("tag", "untag"):
        if waiting[op]:
            send(op)
    return sent, sending


def _report_bad_lines(bad: BadLines, source: str) -> int:
    for line in bad.shown:
        print(f"tagsync reconcile: {source} line {line.number}: {line.reason}", file=sys.stderr)
    if bad.total > len(bad.shown):
        print(
            f"tagsync reconcile: ... {bad.total - len(bad.shown)} more bad lines", file=sys.stderr
        )
    print(f"tagsync reconcile: {bad.total} bad lines; nothing enqueued", file=sys.stderr)
    return 2


def _print(outcome: Outcome, args: argparse.Namespace) -> None:
    if args.json:
        print(json.dumps(outcome.document(args.show)))
        return
    print(f"to tag {outcome.to_tag}, to untag {outcome.to_untag}, unchanged {outcome.unchanged}")
    for op in ("tag", "untag"):
        for openid in outcome.examples[op]:
            print(f"  {op:<5} {openid}")
    if outcome.dry_run:
        if outcome.tag_id is None:
            print(f"dry run: nothing enqueued (tag {args.name!r} would be created)")
        else:
            print("dry run: nothing enqueued")
        return
    print(
        f"enqueued {outcome.enqueued} intents for tag {outcome.tag_id} of {outcome.account}: "
        "the worker applies them at the account's rate (`tagsync status` shows the backlog)"
    )
    if outcome.pending_before:
        print(
            f"tagsync reconcile: note: {outcome.pending_before} intents of tag "
            f"{outcome.tag_id} were not applied yet, so WeChat did not list their effect; "
            "run reconcile again once `tagsync status` shows the tag drained",
            file=sys.stderr,
        )
