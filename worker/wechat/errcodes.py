"""Every WeChat errcode tagsync knows, as data: the whole failure policy in one table.

Per code: its meaning, its class (which exception the client raises), and what the worker
does: the action, the scope and length of a pause, the dead-letter reason and the log
level. The client raises the exception of the code's class; the flush looks the answer's
row up here and dispatches on its action, nothing else. ``tagsync errcodes`` prints the
table as docs/reference/errcodes.md shows it (a test checks that they agree).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Literal


class ErrorClass(StrEnum):
    """What kind of failure an errcode is."""

    #: Retry later: the same call may well succeed (-1, HTTP 5xx, timeouts, garbled answers).
    TRANSIENT = "transient"
    #: The access token is missing, invalid or expired: refresh it once and resend.
    TOKEN = "token"
    #: A quota of the account is used up: stop calling until it resets.
    QUOTA = "quota"
    #: One or more openids in the call can never be (un)tagged.
    OPENID = "openid"
    #: The tag itself is invalid (or WeChat says so for a moment).
    TAG = "tag"
    #: The app's credentials or permissions are wrong: only a human can fix it.
    CREDENTIAL = "credential"
    #: An administrative request was refused for its content (name taken, reserved tag...).
    REJECTED = "rejected"
    #: The request was malformed: a bug in tagsync, never retried.
    PROGRAMMING = "programming"


class Action(StrEnum):
    """What the worker does about a failed batch call."""

    RETRY = "retry with backoff (a counted attempt), up to TAGSYNC_MAX_ATTEMPTS"
    RETRY_FEW = "retry with backoff at most 5 times, then dead-letter the intents"
    REFRESH_TOKEN = "refresh the token once (single flight) and resend; then as -1"
    PAUSE = "pause; keep every intent; no attempt counted"
    SPLIT = "split the batch: apply the good openids, dead-letter each bad one once"
    VERIFY_TAG = "ask `tags/get`: listed, retry as -1; not listed, dead-letter the tag's intents"
    DEAD_LETTER = "dead-letter the batch once, never loop"
    REPORT = "report to the caller (admin commands); a batch call never gets it"


#: Where a pause applies: the whole account, or only the API that answered.
PauseScope = Literal["account", "api"]
#: How long a pause lasts: to the next minute, to 00:00 Asia/Shanghai, a few minutes at a
#: time (until a human fixes the cause), or until the account is authorized again.
PauseLength = Literal["minute", "day", "alarm", "authorization"]
LogLevel = Literal["warning", "error"]

#: How many times an errcode tagsync does not know is retried before dead-lettering.
UNKNOWN_ERRCODE_ATTEMPTS = 5


@dataclass(frozen=True)
class Errcode:
    """One row of the errcode table: what the code means and what the worker does."""

    code: int | None
    meaning: str
    error_class: ErrorClass
    action: Action
    pause_scope: PauseScope | None = None
    pause_length: PauseLength | None = None
    #: The reason on the dead letters this row writes (None: it writes none).
    dead_letter: str | None = None
    level: LogLevel = "warning"


_T, _K, _Q, _O = ErrorClass.TRANSIENT, ErrorClass.TOKEN, ErrorClass.QUOTA, ErrorClass.OPENID
_G, _C, _R, _P = ErrorClass.TAG, ErrorClass.CREDENTIAL, ErrorClass.REJECTED, ErrorClass.PROGRAMMING


#: Dead-letter reasons written by the rows below.
_RETRIES, _BAD_OPENID, _BUG = "retries_exhausted", "permanent", "programming_error"


def _token(code: int, meaning: str) -> Errcode:
    return Errcode(code, meaning, _K, Action.REFRESH_TOKEN, dead_letter=_RETRIES)


def _openid(code: int, meaning: str) -> Errcode:
    return Errcode(code, meaning, _O, Action.SPLIT, dead_letter=_BAD_OPENID)


def _credential(code: int, meaning: str) -> Errcode:
    return Errcode(code, meaning, _C, Action.PAUSE, "account", "alarm", level="error")


def _revoked(code: int, meaning: str) -> Errcode:
    return Errcode(code, meaning, _C, Action.PAUSE, "account", "authorization", level="error")


def _rejected(code: int, meaning: str) -> Errcode:
    return Errcode(code, meaning, _R, Action.REPORT)


def _bug(code: int, meaning: str) -> Errcode:
    return Errcode(code, meaning, _P, Action.DEAD_LETTER, dead_letter=_BUG, level="error")


#: The errcode table: every code tagsync knows (docs/reference/errcodes.md).
ERRCODES: dict[int, Errcode] = {
    int(row.code or 0): row
    for row in (
        Errcode(-1, "system busy", _T, Action.RETRY, dead_letter=_RETRIES),
        _token(40001, "invalid credential or access token"),
        _token(40014, "invalid access token"),
        _token(41001, "access token missing"),
        _token(42001, "access token expired"),
        Errcode(45011, "per-minute API frequency reached", _Q, Action.PAUSE, "account", "minute"),
        Errcode(45009, "daily quota of this API reached", _Q, Action.PAUSE, "api", "day"),
        _openid(40003, "invalid openid"),
        _openid(49003, "openid belongs to another AppID"),
        _openid(45059, "fan already carries the most tags allowed"),
        Errcode(45159, "invalid tag id", _G, Action.VERIFY_TAG, dead_letter="tag_gone"),
        _credential(40013, "invalid AppID"),
        _credential(40125, "invalid app secret"),
        _credential(40164, "caller IP not whitelisted"),
        _credential(61004, "caller IP not whitelisted"),
        _credential(89503, "caller IP needs the administrator's confirmation"),
        _credential(48001, "API not authorised for this account"),
        _revoked(61023, "authorizer refresh token invalid (authorization revoked)"),
        _revoked(61003, "the account has not authorized the component"),
        _credential(61006, "component_verify_ticket invalid or missing"),
        _credential(61005, "component_verify_ticket expired: none pushed for 12 hours"),
        _rejected(45157, "tag name invalid or already used"),
        _rejected(45158, "tag name over 30 bytes"),
        _rejected(45056, "more than 100 tags"),
        _rejected(45058, "tags 0, 1 and 2 are reserved"),
        _rejected(45057, "tag has over 100,000 fans: untag some first"),
        _bug(40032, "over 50 openids in one call"),
        _bug(40002, "invalid grant_type"),
        _bug(47001, "malformed request body"),
    )
}

#: Failures below the API: timeouts, refused or reset connections, HTTP 5xx, answers that
#: are not WeChat's JSON, and a token that cannot be had.
NETWORK = Errcode(
    None, "no usable answer (timeout, connection, HTTP 5xx, garbled body, no token)", _T,
    Action.RETRY, dead_letter="retries_exhausted",
)  # fmt: skip


def token_endpoint_row(code: int) -> Errcode:
    """The row of an errcode the token endpoint answered: anything but -1 means the
    credentials (40001 from ``token`` is a wrong secret), so the account pauses."""
    if code == -1:
        return ERRCODES[-1]
    known = ERRCODES.get(code)
    if known is not None and known.error_class is ErrorClass.CREDENTIAL:
        return known
    return _credential(code, "the token endpoint refused the credentials")


def lookup(code: int | None) -> Errcode:
    """The row of ``code`` (None: below the API); an unknown code is retried a few times."""
    if code is None:
        return NETWORK
    row = ERRCODES.get(code)
    if row is None:
        return Errcode(code, "unknown errcode", _T, Action.RETRY_FEW, dead_letter="unknown_errcode")
    return row


def _pause_text(row: Errcode) -> str:
    if row.pause_scope is None:
        return ""
    length = {
        "minute": "until the next minute",
        "day": "until 00:00 Asia/Shanghai or `tagsync quota reset`",
        "alarm": "5 minutes at a time, alarm",
        "authorization": "until authorized again (`tagsync accounts authorize`), alarm",
    }[row.pause_length or "alarm"]
    return f"{'the account' if row.pause_scope == 'account' else 'that API only'}, {length}"


def markdown_table() -> str:
    """The failure policy as the table of docs/reference/errcodes.md (checked against it by
    the tests)."""
    rows = [*ERRCODES.values(), NETWORK, lookup(-999_999)]
    lines = [
        "| errcode | meaning | class | what the worker does | pause | dead-letter reason | log |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        if row is NETWORK:
            code = "(network)"
        elif row.code == -999_999:
            code = "(any other)"
        else:
            code = str(row.code)
        lines.append(
            f"| {code} | {row.meaning} | {row.error_class.value} | {row.action.value} "
            f"| {_pause_text(row)} | {row.dead_letter or ''} | {row.level} |"
        )
    return "\n".join(lines)
