"""The intent contract: what one "tag or untag fan X with tag T" looks like, and its checks.

An intent is ``{"op": "tag"|"untag", "tag_id": int >= 0, "openid": str, "ts": float,
"account": str}``; a tag may be named instead, ``"tag": "VIP"`` in place of ``tag_id``
(the worker resolves names per account). On the queue a message carries up to 1,000
intents as compact rows ``[op, tag_id or name, openid, ts, account]``; the worker checks
every row again, since anything may have written to the queue.
"""

from __future__ import annotations

import math
import os
import re
import time
from collections.abc import Iterable, Mapping
from typing import Any, Literal, NamedTuple

#: The dramatiq queue intents travel on.
QUEUE_NAME = "tagsync.intents"
#: The worker's actor that merges intents into the pending buffers.
INGEST_ACTOR = "ingest"
#: Most intents in one queue message.
MAX_INTENTS_PER_MESSAGE = 1000
#: What an openid may look like (WeChat's are 28 characters of this alphabet); matched
#: against the whole string (``$`` alone would let a trailing newline through).
OPENID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")
#: What an account (AppID) may look like, matched against the whole string.
ACCOUNT_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")
#: How far in the future an event time may lie: more is a wrong clock or milliseconds.
MAX_FUTURE_S = 86_400.0
#: The fields of an intent (``tag_id`` or ``tag``, not both).
FIELDS = frozenset({"op", "tag_id", "tag", "openid", "ts", "account"})
#: The largest tag id: WeChat's tag ids are 32-bit signed integers.
MAX_TAG_ID = 2**31 - 1
#: A tag name's limit in UTF-8 bytes (WeChat answers 45158 beyond it).
MAX_TAG_NAME_BYTES = 30
#: The ``tag_id`` of an intent that names its tag, until the worker resolves the name.
UNRESOLVED = -1

Op = Literal["tag", "untag"]


class InvalidIntent(ValueError):
    """An intent is malformed. ``field`` names the field, ``index`` its place in the call."""

    def __init__(self, field: str, message: str, *, index: int | None = None) -> None:
        self.field = field
        self.index = index
        self.message = message
        where = f"intent {index}: " if index is not None else ""
        super().__init__(f"{where}{field}: {message}")


class Intent(NamedTuple):
    """One checked intent. One that names its tag has ``tag_name`` and ``tag_id`` -1
    until the worker resolves the name (``resolved``)."""

    op: Op
    tag_id: int
    openid: str
    ts: float
    account: str
    tag_name: str | None = None

    def row(self) -> list[Any]:
        """The compact form carried in queue messages."""
        tag = self.tag_id if self.tag_name is None else self.tag_name
        return [self.op, tag, self.openid, self.ts, self.account]

    def resolved(self, tag_id: int) -> Intent:
        """This intent for tag ``tag_id``, the id its name stands for."""
        return self._replace(tag_id=tag_id, tag_name=None)


def default_account() -> str | None:
    """The account of intents that name none: ``WECHAT_APPID``."""
    return os.environ.get("WECHAT_APPID") or None


def check_op(op: Any) -> Op:
    """``op`` if it is "tag" or "untag"."""
    if op == "tag" or op == "untag":
        return op  # type: ignore[no-any-return]
    raise InvalidIntent("op", f"must be 'tag' or 'untag', not {_show(op)}")


def check_tag_id(tag_id: Any) -> int:
    """``tag_id`` if it is a whole number from 0 to 2^31 - 1 (bools are refused)."""
    if isinstance(tag_id, bool) or not isinstance(tag_id, int):
        raise InvalidIntent("tag_id", f"must be a whole number >= 0, not {_show(tag_id)}")
    if not 0 <= tag_id <= MAX_TAG_ID:
        raise InvalidIntent("tag_id", f"must be from 0 to {MAX_TAG_ID}, not {_show(tag_id)}")
    return tag_id


def check_tag_name(name: Any, field: str = "tag") -> str:
    """``name`` if it is a tag name WeChat takes: not blank, at most 30 UTF-8 bytes."""
    if not isinstance(name, str) or not name.strip():
        raise InvalidIntent(field, f"must be a tag name (1 to 30 UTF-8 bytes), not {_show(name)}")
    size = len(name.encode("utf-8", "surrogatepass"))
    if size > MAX_TAG_NAME_BYTES:
        raise InvalidIntent(
            field, f"is {size} UTF-8 bytes; WeChat allows {MAX_TAG_NAME_BYTES}: {_show(name)}"
        )
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidIntent(field, f"is not valid Unicode text: {_show(name)}") from None
    return name


def check_tag(tag: Any) -> tuple[int, str | None]:
    """A tag given by id (an int) or by name (a str): (tag_id, name or None)."""
    if isinstance(tag, str):
        if tag.strip().isdigit():
            raise InvalidIntent(
                "tag_id",
                f"{_show(tag)} is a string: pass the number {tag.strip()} as tag_id "
                "(a tag name of digits only is refused: it would read as an id)",
            )
        return UNRESOLVED, check_tag_name(tag)
    return check_tag_id(tag), None


def check_openid(openid: Any) -> str:
    """``openid`` if it is 1 to 64 characters of ``[A-Za-z0-9_-]``."""
    if not isinstance(openid, str) or not OPENID_PATTERN.fullmatch(openid):
        raise InvalidIntent(
            "openid", f"must be 1 to 64 characters of A-Z a-z 0-9 _ -, not {_show(openid)}"
        )
    return openid


def check_ts(ts: Any, now: float) -> float:
    """``ts`` if it is a plausible event time in epoch seconds: from 0 to a day from now."""
    if isinstance(ts, bool) or not isinstance(ts, int | float):
        raise InvalidIntent("ts", f"must be epoch seconds as a number, not {_show(ts)}")
    try:
        seconds = float(ts)  # an int too large for a float (10**400) raises here
    except OverflowError:
        seconds = math.inf
    if not math.isfinite(seconds):
        raise InvalidIntent("ts", f"must be a finite number of epoch seconds, not {_show(ts)}")
    if seconds < 0:
        raise InvalidIntent("ts", f"must be >= 0, not {_show(ts)}")
    if seconds > now + MAX_FUTURE_S:
        hint = " (milliseconds? ts is in seconds)" if seconds > now * 100 else ""
        raise InvalidIntent("ts", f"{seconds:.0f} lies more than a day in the future{hint}")
    return seconds


def check_account(account: Any) -> str:
    """``account`` if it looks like an AppID."""
    if account is None:
        raise InvalidIntent("account", "missing: pass account= or set WECHAT_APPID")
    if not isinstance(account, str) or not ACCOUNT_PATTERN.fullmatch(account):
        raise InvalidIntent(
            "account", f"must be 1 to 64 characters of A-Z a-z 0-9 _ -, not {_show(account)}"
        )
    return account


def make_intent(
    op: Any,
    tag: Any,
    openid: Any,
    ts: Any = None,
    account: Any = None,
    *,
    now: float | None = None,
) -> Intent:
    """A checked ``Intent`` for ``tag`` (an id, or a name); ``ts`` defaults to now,
    ``account`` to ``WECHAT_APPID``."""
    now = time.time() if now is None else now
    op = check_op(op)
    tag_id, name = check_tag(tag)
    return Intent(
        op,
        tag_id,
        check_openid(openid),
        now if ts is None else check_ts(ts, now),
        check_account(default_account() if account is None else account),
        name,
    )


def build_intents(
    op: str, tag: int | str, openids: str | Iterable[str], ts: float | None, account: str | None
) -> list[Intent]:
    """Intents of one op for one tag (id or name) and one or many openids; the first bad
    one raises."""
    now = time.time()
    if isinstance(openids, str):
        items: Iterable[Any] = [openids]
    elif isinstance(openids, Iterable) and not isinstance(openids, bytes | Mapping):
        items = openids
    else:
        raise InvalidIntent(
            "openids", f"must be an openid or an iterable of them, not {_show(openids)}"
        )
    intents = []
    for index, openid in enumerate(items):
        try:
            intents.append(make_intent(op, tag, openid, ts, account, now=now))
        except InvalidIntent as exc:
            raise InvalidIntent(exc.field, exc.message, index=index) from None
    return intents


def parse_intent(value: Any, *, index: int | None = None, now: float | None = None) -> Intent:
    """Check one intent dict (as sent by ``send``, JSON lines or HTTP)."""
    try:
        if not isinstance(value, Mapping):
            raise InvalidIntent("intent", f"must be an object, not {_show(value)}")
        unknown = [key for key in value if key not in FIELDS]
        if unknown:
            key = unknown[0]
            name = key if isinstance(key, str) and key.strip() else _show(key)
            raise InvalidIntent(name, f"unknown field (fields are {', '.join(sorted(FIELDS))})")
        for required in ("op", "openid"):
            if required not in value:
                raise InvalidIntent(required, "missing")
        if "tag_id" in value and "tag" in value:
            raise InvalidIntent("tag", "give tag_id or tag (a name), not both")
        if "tag" in value:
            tag: int | str = check_tag_name(value["tag"])
            check_tag(tag)  # digits only: an id in the wrong field
        elif "tag_id" in value:
            tag = check_tag_id(value["tag_id"])
        else:
            raise InvalidIntent("tag_id", "missing (or name the tag with 'tag')")
        return make_intent(
            value["op"],
            tag,
            value["openid"],
            value.get("ts"),
            value.get("account"),
            now=now,
        )
    except InvalidIntent as exc:
        if index is None:
            raise
        raise InvalidIntent(exc.field, exc.message, index=index) from None


def check_all(
    values: Iterable[Any], *, limit: int = 100
) -> tuple[list[Intent], list[InvalidIntent]]:
    """Check every intent; return the good ones and up to ``limit`` errors (for reports)."""
    now = time.time()
    intents: list[Intent] = []
    errors: list[InvalidIntent] = []
    for index, value in enumerate(values):
        try:
            intents.append(parse_intent(value, index=index, now=now))
        except InvalidIntent as exc:
            if len(errors) < limit:
                errors.append(exc)
    return intents, errors


def parse_intents(values: Iterable[Any]) -> list[Intent]:
    """Check every intent; the first bad one raises ``InvalidIntent`` naming its index."""
    if isinstance(values, str | bytes | Mapping) or not isinstance(values, Iterable):
        raise InvalidIntent("intents", f"must be a list of intent objects, not {_show(values)}")
    now = time.time()
    return [parse_intent(value, index=i, now=now) for i, value in enumerate(values)]


def parse_row(row: Any) -> Intent:
    """Check one queue row ``[op, tag_id or name, openid, ts, account]`` (the worker's side)."""
    if not isinstance(row, list | tuple) or len(row) != 5:
        raise InvalidIntent("row", f"must be [op, tag_id, openid, ts, account], not {_show(row)}")
    op, tag_id, openid, ts, account = row
    if ts is None:
        raise InvalidIntent("ts", "missing")
    return make_intent(op, tag_id, openid, ts, account)


def chunks(intents: list[Intent], size: int = MAX_INTENTS_PER_MESSAGE) -> Iterable[list[Intent]]:
    """``intents`` in slices of at most ``size``."""
    for start in range(0, len(intents), size):
        yield intents[start : start + size]


def _show(value: Any) -> str:
    """A short, safe rendering of any value for an error message."""
    try:
        text = repr(value)
    except (ValueError, RecursionError):  # an int of over 4,300 digits; deep nesting
        return f"a {type(value).__name__} too large to show"
    return text if len(text) <= 40 else text[:37] + "..."
