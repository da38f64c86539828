"""The exceptions of the WeChat client: one class per errcode class, so callers branch on type."""

from __future__ import annotations

from typing import ClassVar

from worker.observability.redaction import redact
from worker.wechat.errcodes import Errcode, ErrorClass, lookup, token_endpoint_row


class WeChatError(Exception):
    """A WeChat call failed. Carries the call, the errcode (None below the API) and errmsg."""

    error_class: ClassVar[ErrorClass] = ErrorClass.TRANSIENT

    def __init__(self, call: str, errcode: int | None, errmsg: str) -> None:
        self.call = call
        self.errcode = errcode
        # WeChat's errmsg and requests' messages may echo the URL with its access_token.
        self.errmsg = redact(errmsg)
        code = "" if errcode is None else f"errcode {errcode}: "
        super().__init__(f"{call}: {code}{self.errmsg}")

    @property
    def row(self) -> Errcode:
        """This error's row of the errcode table (``NETWORK`` below the API)."""
        return lookup(self.errcode)

    def __repr__(self) -> str:
        name = type(self).__name__
        return f"{name}(call={self.call!r}, errcode={self.errcode!r}, errmsg={self.errmsg!r})"

    def __reduce__(self) -> tuple[type[WeChatError], tuple[str, int | None, str]]:
        # Pickled across processes (e.g. by dramatiq's results) with its real arguments.
        return (type(self), (self.call, self.errcode, self.errmsg))


class TransientError(WeChatError):
    """Worth retrying later: -1, unknown errcodes, HTTP 5xx, timeouts, connection errors."""

    error_class = ErrorClass.TRANSIENT


class NetworkError(TransientError):
    """No usable answer: a timeout, a refused or reset connection, HTTP 5xx, a body that is
    not WeChat's JSON (an HTML error page, no errcode, fields missing)."""


class TokenUnavailable(NetworkError):
    """No access token could be had in time (another process held the fetch lock)."""

    def __init__(self, errmsg: str) -> None:
        super().__init__("token", None, errmsg)

    def __reduce__(self) -> tuple[type[WeChatError], tuple[str, int | None, str]]:
        return (NetworkError, (self.call, self.errcode, self.errmsg))


class TokenError(WeChatError):
    """The access token is missing, invalid or expired (the client already resent once)."""

    error_class = ErrorClass.TOKEN


class QuotaError(WeChatError):
    """The account's per-minute frequency (45011) or daily quota (45009) is reached."""

    error_class = ErrorClass.QUOTA


class OpenidError(WeChatError):
    """Some openid of the call can never succeed (40003, 49003, 45059); nothing was applied."""

    error_class = ErrorClass.OPENID


class TagError(WeChatError):
    """The tag id is not valid (45159)."""

    error_class = ErrorClass.TAG


class CredentialError(WeChatError):
    """The AppID, secret, IP whitelist or API permission is wrong; only a human can fix it."""

    error_class = ErrorClass.CREDENTIAL


class TokenRefused(CredentialError):
    """The token endpoint refused the AppID and secret (any errcode there but -1)."""

    @property
    def row(self) -> Errcode:
        """A credential row, whatever the code means on other endpoints."""
        return token_endpoint_row(self.errcode if self.errcode is not None else 0)


class RejectedError(WeChatError):
    """An administrative request was refused for its content (name taken, reserved tag...)."""

    error_class = ErrorClass.REJECTED


class ProgrammingError(WeChatError):
    """WeChat says the request was malformed: a bug in tagsync."""

    error_class = ErrorClass.PROGRAMMING


_BY_CLASS: dict[ErrorClass, type[WeChatError]] = {
    cls.error_class: cls
    for cls in (
        TransientError,
        TokenError,
        QuotaError,
        OpenidError,
        TagError,
        CredentialError,
        RejectedError,
        ProgrammingError,
    )
}


def error_for(call: str, errcode: int, errmsg: str) -> WeChatError:
    """The exception for ``errcode`` on ``call``, of its class in the errcode table."""
    return _BY_CLASS[lookup(errcode).error_class](call, errcode, errmsg)
