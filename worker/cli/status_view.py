"""How ``tagsync status`` shows a report of ``collect_status`` (``worker.cli.worker``).

- on a terminal: a live view (rich), one table of accounts and one of tags, redrawn every
  few seconds until Ctrl-C, cut to the terminal's height;
- through a pipe: the plain text that scripts parse (``plain_text``), one look;
- ``--json`` is printed by ``run_status`` itself.

The rate an account is using comes from two looks at its gate (``RateMeter``): the gate
counts every call of the day in ``tagsync:{account}:budget``, budget or not.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import redis
from rich import box
from rich.console import Console, Group, JustifyMethod, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from worker.accounts.controls import OPERATOR
from worker.gate import AccountGate, emission_interval_ms

#: Lines of a frame around the table rows: the heading, each table's title, header and
#: rule, the workers line and the totals line.
FRAME_LINES = 1 + 2 * 3 + 2


# -- plain text (a pipe, a script) ---------------------------------------------------------


def plain_text(report: Mapping[str, Any]) -> str:
    """The report as ``tagsync status`` prints it to a pipe: one line per tag, per account,
    and the totals (scripts and tests parse it: keep it stable)."""
    lines = []
    columns = ("PENDING+", "PENDING-", "IN-FLIGHT", "OLDEST")
    lines.append(f"{'ACCOUNT':<20} {'TAG':>6} " + " ".join(f"{c:>9}" for c in columns) + "  STATE")
    for tag in report["tags"]:
        age = tag["oldest_pending_age_s"]
        pending = tag["pending"]
        lines.append(
            f"{tag['account']:<20} {tag['tag_id']:>6} {pending['tag']:>9} {pending['untag']:>9} "
            f"{tag['in_flight']:>9} {'-' if age is None else f'{age:.1f}s':>9}  {_tag_state(tag)}"
        )
    for account, state in report["accounts"].items():
        token = state["token"]
        paused = [
            f"PAUSED{'' if scope == 'account' else ' ' + scope} ({pause['reason']}, errcode "
            f"{pause['errcode'] or '-'}) {_until(pause)}: {pause['message']}"
            for scope, pause in state["pauses"].items()
        ]
        limits = state.get("limits_set")
        lines.append(
            f"account {account}: "
            + ("; ".join(paused) if paused else "running")
            + f"; rate {state['rate']['limit_per_s']:g}/s"
            + (" (from settings: no call yet)" if state["rate"]["source"] == "settings" else "")
            + (f" (limits set by {limits['by']})" if limits else "")
            + ", slots reserved "
            f"{state['rate']['reserved_ahead_ms']} ms ahead; {state['budget']['used_today']} calls "
            f"today (budget {state['budget']['limit'] or 'none'}); token "
            + (f"cached, {token['expires_in_s']} s left" if token["cached"] else "not cached")
        )
    for worker in report.get("workers", ()):
        lines.append(_worker_line(worker))
    lines.append(_totals(report["totals"]))
    return "\n".join(lines)


def _worker_line(worker: Mapping[str, Any]) -> str:
    last = worker["last_message_age_s"]
    return (
        f"worker {worker['name']}: "
        + ("alive" if worker["alive"] else f"GONE (no heartbeat for {worker['beat_age_s']:.0f} s)")
        + f", {worker['threads']} threads, up since {_clock(worker['started_at'])}, "
        f"{worker['messages']} messages, last " + ("none" if last is None else f"{last:.1f} s ago")
    )


def _workers_summary(workers: list[Mapping[str, Any]]) -> str:
    alive = [w["name"] for w in workers if w["alive"]]
    gone = len(workers) - len(alive)
    shown = ", ".join(alive[:6]) + (f" and {len(alive) - 6} more" if len(alive) > 6 else "")
    return (
        f"workers: {len(alive)} alive"
        + (f" ({shown})" if alive else "")
        + (f", {gone} gone" if gone else "")
    )


def _tag_state(tag: Mapping[str, Any]) -> str:
    held = tag.get("paused")
    if held:
        return f"PAUSED by {held.get('by', '?')}: {held.get('reason', '')}"
    return "flushing" if tag["flushing"] else (tag["scheduled"] or "idle")


def _clock(epoch_s: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(epoch_s))


def _until(pause: Mapping[str, Any]) -> str:
    """When a pause ends: an operator's lasts until ``tagsync resume``."""
    if pause["reason"] == OPERATOR:
        return "until resumed"
    return f"until {_clock(pause['until'])}"


def _totals(totals: Mapping[str, Any]) -> str:
    return (
        f"totals: {totals['pending']} pending, {totals['in_flight']} in flight, "
        f"{totals['queued_messages']} queued messages, {totals['dead_letters']} dead letters"
    )


# -- the rate in use -----------------------------------------------------------------------


@dataclass(frozen=True)
class GateLook:
    """One look at an account's gate, on Redis's clock."""

    now_ms: float
    #: The rate limiter's theoretical arrival time: the end of the slots reserved so far
    #: (None: the key expired, no slot in the last second or so).
    reserved_until_ms: float | None
    #: The Shanghai day the gate counts calls for (None: no call in two days, none counted).
    day: int | None
    #: Calls the gate counted that day.
    counted: int


class RateMeter:
    """The rate each account is using, from two looks at its gate in Redis.

    The gate counts every call when it reserves the call's slot, so the calls made between
    the looks are the count's growth less the growth of the slots reserved ahead (exact, as
    far as every reserved slot is used).
    """

    def __init__(self, connection: redis.Redis) -> None:
        self.redis = connection
        self._last: dict[str, GateLook] = {}

    def rates(self, accounts: Mapping[str, Mapping[str, Any]]) -> dict[str, float | None]:
        """Look at the gates of ``accounts`` (a report's ``accounts``); the calls per second
        each made since the previous look (None on the first look at an account)."""
        looks = self.looks(accounts)
        rates: dict[str, float | None] = {}
        for appid, now in looks.items():
            before = self._last.get(appid)
            state = accounts[appid]
            rates[appid] = (
                None
                if before is None
                else rate_between(
                    before,
                    now,
                    limit_per_s=float(state["rate"]["limit_per_s"]),
                    burst=int(state["rate"]["burst"]),
                )
            )
        self._last = looks
        return rates

    def looks(self, accounts: Iterable[str]) -> dict[str, GateLook]:
        """A look at the gate of each of ``accounts``, Redis's clock then one pipeline (a
        cluster's pipeline spans nodes and refuses TIME: the clock is asked first)."""
        appids = list(accounts)
        seconds, micros = self.redis.time()
        pipe = self.redis.pipeline(transaction=False)
        for appid in appids:
            pipe.get(AccountGate.key(appid, "rate"))
            pipe.hmget(AccountGate.key(appid, "budget"), "day", "used")
        answers = pipe.execute()
        now_ms = seconds * 1000 + micros / 1000
        looks = {}
        for i, appid in enumerate(appids):
            reserved, (day, counted) = answers[2 * i : 2 + 2 * i]
            looks[appid] = GateLook(
                now_ms,
                float(reserved) if reserved else None,
                int(day) if day else None,
                int(counted or 0),
            )
        return looks


def rate_between(
    before: GateLook, after: GateLook, *, limit_per_s: float, burst: int
) -> float | None:
    """The calls per second made between two looks at a gate (see ``RateMeter``); None if
    no time passed, or the count was reset between them (a new Shanghai day, ``accounts
    resume``): the next look has a figure again."""
    elapsed_ms = after.now_ms - before.now_ms
    reset = before.day not in (None, after.day) or after.counted < before.counted
    if elapsed_ms <= 0 or reset:
        return None
    spacing_ms = emission_interval_ms(limit_per_s)
    made = _made(after, spacing_ms, burst) - _made(before, spacing_ms, burst)
    return max(0.0, made) * 1000 / elapsed_ms


def _made(look: GateLook, spacing_ms: float, burst: int) -> float:
    """Calls made by a look: those the gate counted less the slots still ahead of it (the
    gate counts a call when it reserves its slot, up to seconds ahead under load).

    Fractional: the whole slots ahead (a ceiling) stepped by one between looks, and a live
    view at 0.5 s showed 11.6/s for a gate at 10/s; in fractions, a gate kept busy reads
    its own rate."""
    if look.reserved_until_ms is None:
        return look.counted
    ahead = (look.reserved_until_ms - look.now_ms) / spacing_ms - burst
    return look.counted - max(0, ahead)


# -- the terminal view ---------------------------------------------------------------------


def frame(
    report: Mapping[str, Any],
    rates: Mapping[str, float | None],
    *,
    height: int | None = None,
    heading: str = "",
) -> RenderableType:
    """One view of the report: accounts, tags, totals; at most ``height`` lines (None: all),
    the busiest tags and the paused and busiest accounts first."""
    backlog: dict[str, int] = {}
    for tag in report["tags"]:
        backlog[tag["account"]] = backlog.get(tag["account"], 0) + _unsettled(tag)
    accounts = sorted(
        report["accounts"].items(),
        key=lambda item: (not item[1]["pauses"], -backlog.get(item[0], 0), item[0]),
    )
    tags = sorted(
        report["tags"],
        key=lambda t: (
            -_unsettled(t),
            -(t["oldest_pending_age_s"] or 0),
            t["account"],
            t["tag_id"],
        ),
    )
    account_rows, tag_rows = _rows_that_fit(len(accounts), len(tags), height)

    account_table = _table(
        ("ACCOUNT", "left"),
        ("LIMIT", "right"),
        ("IN USE", "right"),
        ("AHEAD", "right"),
        ("TODAY", "right"),
        ("TOKEN", "right"),
        ("STATE", "left"),
    )
    shown_accounts, more_accounts = _cut(accounts, account_rows)
    for appid, state in shown_accounts:
        rate = state["rate"]
        budget = state["budget"]
        token = state["token"]
        in_use = rates.get(appid)
        account_table.add_row(
            appid,
            f"{rate['limit_per_s']:g}/s"
            + (f" x{rate['burst']}" if rate["burst"] > 1 else "")
            + (" set" if state.get("limits_set") else ""),
            "-" if in_use is None else f"{in_use:.1f}/s",
            f"{rate['reserved_ahead_ms']} ms",
            f"{budget['used_today']}" + (f"/{budget['limit']}" if budget["limit"] else ""),
            f"{token['expires_in_s']} s" if token["cached"] else "none",
            _account_state(state["pauses"]),
        )
    _more(account_table, more_accounts, "accounts")

    tag_table = _table(
        ("ACCOUNT", "left"),
        ("TAG", "right"),
        ("PENDING+", "right"),
        ("PENDING-", "right"),
        ("IN FLIGHT", "right"),
        ("OLDEST", "right"),
        ("STATE", "left"),
    )
    shown_tags, more_tags = _cut(tags, tag_rows)
    for tag in shown_tags:
        age = tag["oldest_pending_age_s"]
        tag_table.add_row(
            tag["account"],
            str(tag["tag_id"]),
            str(tag["pending"]["tag"]),
            str(tag["pending"]["untag"]),
            str(tag["in_flight"]),
            "-" if age is None else f"{age:.1f}s",
            _cell(_tag_state(tag)),
        )
    _more(tag_table, more_tags, "tags")

    return Group(
        Text(heading or "tagsync status", style="bold"),
        Text(f"accounts ({len(accounts)})", style="bold cyan"),
        account_table,
        Text(
            f"tags ({len(tags)}, {sum(1 for t in tags if _unsettled(t))} with a backlog)",
            style="bold cyan",
        ),
        tag_table,
        Text(_workers_summary(report.get("workers", []))),
        Text(_totals(report["totals"])),
    )


def _unsettled(tag: Mapping[str, Any]) -> int:
    return int(tag["pending"]["tag"] + tag["pending"]["untag"] + tag["in_flight"])


def _rows_that_fit(accounts: int, tags: int, height: int | None) -> tuple[int, int]:
    """Rows of each table (a "+N more" line included) in ``height`` lines: a third for the
    accounts at most when tags need the room, and at least one row each."""
    if height is None:
        return accounts, tags
    room = max(2, height - FRAME_LINES - 1)  # and a line for the cursor (or the prompt)
    account_rows = max(1, min(accounts, max(room // 3, room - tags)))
    return account_rows, max(1, room - account_rows)


def _cut(rows: list[Any], room: int) -> tuple[list[Any], int]:
    """The rows that fit in ``room`` lines, one of them kept for "+N more"; and N."""
    if len(rows) <= room:
        return rows, 0
    shown = rows[: max(0, room - 1)]
    return shown, len(rows) - len(shown)


def _more(table: Table, hidden: int, what: str) -> None:
    if hidden:
        table.add_row(Text(f"+{hidden} more {what}", style="dim"))


def _table(*columns: tuple[str, JustifyMethod]) -> Table:
    """A table of one line per row, whatever the width (the height cap counts rows as
    lines): cells never wrap, and the last column (its cells are ``Text`` that does not
    wrap) is the one that narrows, to an ellipsis, when the terminal is too narrow."""
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    *fixed, (last, last_justify) = columns
    for name, justify in fixed:
        table.add_column(name, justify=justify, no_wrap=True, overflow="ellipsis")
    table.add_column(last, justify=last_justify, overflow="ellipsis")
    return table


def _cell(text: str, style: str = "") -> Text:
    """A cell of the narrowing column."""
    return Text(text, style=style, no_wrap=True, overflow="ellipsis")


def _account_state(pauses: Mapping[str, Mapping[str, Any]]) -> Text:
    if not pauses:
        return _cell("running", "green")
    parts = [
        ("PAUSED" if scope == "account" else f"{scope.rsplit('/', 1)[-1]} PAUSED")
        + f" {pause['reason']} {pause['errcode'] or '-'} {_until(pause)}"
        for scope, pause in pauses.items()
    ]
    return _cell("; ".join(parts), "bold red")


def watch(
    fetch: Callable[[], Mapping[str, Any]],
    meter: RateMeter,
    *,
    console: Console,
    interval_s: float,
    once: bool = False,
) -> int:
    """Show ``fetch()``'s report on ``console``: once (a ``RedisError`` is raised, for the
    command's one-line exit 2), or redrawn every ``interval_s`` until Ctrl-C (exit 0)."""
    capped = console.is_terminal

    def look(heading: str) -> RenderableType:
        report = fetch()
        height = console.size.height if capped else None
        return frame(report, meter.rates(report["accounts"]), height=height, heading=heading)

    def render() -> RenderableType:
        heading = f"tagsync status  {time.strftime('%H:%M:%S')}"
        heading += f"  every {interval_s:g} s, Ctrl-C to quit"
        try:
            return look(heading)
        except redis.RedisError as exc:  # Redis restarting: say so, look again next time
            return Text(f"{heading}\nRedis does not answer: {exc}", style="bold red")

    if once:
        console.print(look(f"tagsync status  {time.strftime('%H:%M:%S')}"))
        return 0
    try:
        with Live(console=console, auto_refresh=False, redirect_stdout=False) as live:
            while True:
                live.update(render(), refresh=True)
                time.sleep(interval_s)
    except KeyboardInterrupt:
        return 0
