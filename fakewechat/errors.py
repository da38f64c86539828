"""WeChat's error answers: the errmsg of each errcode the simulator gives, and the bodies."""

from __future__ import annotations

from typing import Any

#: errcode -> errmsg, as WeChat words them.
ERRMSG = {
    0: "ok",
    -1: "system error",
    40001: "invalid credential, access_token is invalid or not latest",
    40002: "invalid grant_type",
    40003: "invalid openid",
    40013: "invalid appid",
    40014: "invalid access_token",
    40032: "invalid openid list size, at most 50",
    40125: "invalid appsecret",
    41001: "access_token missing",
    42001: "access_token expired",
    43002: "require POST method",
    44002: "empty post data",
    45009: "reach max api daily quota limit",
    45011: "api minute-quota reach limit, mustslower retry next minute",
    45056: "too many tags",
    45057: "can't delete the tag that has too many fans",
    45058: "can't modify sys tag",
    45059: "has too many tags",
    45157: "invalid tag name",
    45158: "tag name too long",
    45159: "invalid tag id",
    47001: "data format error",
    49003: "not match openid with appid",
    # The Open Platform's own (component calls).
    61003: "component is not authorized by this account",
    61005: "component ticket is expired",
    61006: "component ticket is invalid",
    61023: "refresh_token is invalid",
}

#: The body of a successful call that returns nothing else.
OK = {"errcode": 0, "errmsg": "ok"}


def error(code: int, detail: str = "") -> dict[str, Any]:
    """A WeChat error body."""
    message = ERRMSG.get(code, "error")
    return {"errcode": code, "errmsg": f"{message}{' hint: ' + detail if detail else ''}"}
