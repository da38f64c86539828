"""Every WeChat errcode tagsync knows, as data: code -> meaning -> class -> what the worker does.

This table is the one place that decides how an errcode is handled; the client raises the
exception of the code's class, and the flush reads the action from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class ErrorClass(StrEnum):
    """What kind of failure an errcode is."""

    #: Retry later: the same call may well succeed (-1, HTTP 5xx, timeouts).
    TRANSIENT = "transient"
    #: The access token is missing, invalid or expired: refresh it once and resend.
    TOKEN = "token"
    #: A quota of the account is used up: stop calling until it resets.
    QUOTA = "quota"
    #: One or more openids in the call can never be (un)tagged.
    OPENID = "openid"
    #: The tag itself is invalid: no call for it can succeed.
    TAG = "tag"
    #: The app's credentials or permissions are wrong: only a human can fix it.
    CREDENTIAL = "credential"
    #: An administrative request was refused for its content (name taken, reserved tag...).
    REJECTED = "rejected"
    #: The request was malformed: a bug in tagsync, never retried.
    PROGRAMMING = "programming"


class Action(StrEnum):
    """What the worker does about an errcode."""

    RETRY = "return the batch to pending and retry with backoff"
    REFRESH_TOKEN = "refresh the token once (single flight) and resend"
    PAUSE_MINUTE = "pause the account's calls until the next minute"
    PAUSE_DAY = "pause the account until 00:00 Asia/Shanghai or `tagsync quota reset`"
    BISECT = "bisect the batch; apply the good openids, dead-letter the bad ones"
    DEAD_LETTER_TAG = "dead-letter the tag's pending intents"
    PAUSE_ALARM = "pause the account, keep every intent, alarm"
    REPORT = "report to the caller; nothing to retry"
    DEAD_LETTER_BUG = "log and dead-letter as programming_error, never loop"


@dataclass(frozen=True)
class Errcode:
    """One row of the errcode table."""

    code: int
    meaning: str
    error_class: ErrorClass
    action: Action


_T, _K, _Q, _O = ErrorClass.TRANSIENT, ErrorClass.TOKEN, ErrorClass.QUOTA, ErrorClass.OPENID
_G, _C, _R, _P = ErrorClass.TAG, ErrorClass.CREDENTIAL, ErrorClass.REJECTED, ErrorClass.PROGRAMMING

#: The errcode table: every code of the seed and of DESIGN §1.
ERRCODES: dict[int, Errcode] = {
    row.code: row
    for row in (
        Errcode(-1, "system busy", _T, Action.RETRY),
        Errcode(40001, "invalid credential or access token", _K, Action.REFRESH_TOKEN),
        Errcode(40014, "invalid access token", _K, Action.REFRESH_TOKEN),
        Errcode(41001, "access token missing", _K, Action.REFRESH_TOKEN),
        Errcode(42001, "access token expired", _K, Action.REFRESH_TOKEN),
        Errcode(45011, "per-minute API frequency reached", _Q, Action.PAUSE_MINUTE),
        Errcode(45009, "daily API quota reached", _Q, Action.PAUSE_DAY),
        Errcode(40003, "invalid openid", _O, Action.BISECT),
        Errcode(49003, "openid belongs to another AppID", _O, Action.BISECT),
        Errcode(45059, "fan already carries the most tags allowed", _O, Action.BISECT),
        Errcode(45159, "invalid tag id", _G, Action.DEAD_LETTER_TAG),
        Errcode(40013, "invalid AppID", _C, Action.PAUSE_ALARM),
        Errcode(40125, "invalid app secret", _C, Action.PAUSE_ALARM),
        Errcode(40164, "caller IP not whitelisted", _C, Action.PAUSE_ALARM),
        Errcode(61004, "caller IP not whitelisted", _C, Action.PAUSE_ALARM),
        Errcode(48001, "API not authorised for this account", _C, Action.PAUSE_ALARM),
        Errcode(45157, "tag name invalid or already used", _R, Action.REPORT),
        Errcode(45158, "tag name over 30 bytes", _R, Action.REPORT),
        Errcode(45056, "more than 100 tags", _R, Action.REPORT),
        Errcode(45058, "tags 0, 1 and 2 are reserved", _R, Action.REPORT),
        Errcode(45057, "tag has over 100,000 fans: untag some first", _R, Action.REPORT),
        Errcode(40032, "over 50 openids in one call", _P, Action.DEAD_LETTER_BUG),
        Errcode(40002, "invalid grant_type", _P, Action.DEAD_LETTER_BUG),
        Errcode(47001, "malformed request body", _P, Action.DEAD_LETTER_BUG),
    )
}


def lookup(code: int) -> Errcode:
    """The row of ``code``; an unknown code is transient (retried, then dead-lettered)."""
    row = ERRCODES.get(code)
    if row is None:
        return Errcode(code, "unknown errcode", ErrorClass.TRANSIENT, Action.RETRY)
    return row
