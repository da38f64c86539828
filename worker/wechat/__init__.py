"""The WeChat user tag API: client, errcode table, exceptions and shared tokens."""

from worker.wechat.client import (
    MAX_BATCH,
    FansPage,
    Quota,
    Tag,
    WeChatClient,
    check_tag_name,
)
from worker.wechat.errcodes import ERRCODES, Action, Errcode, ErrorClass, lookup
from worker.wechat.errors import (
    CredentialError,
    NetworkError,
    OpenidError,
    ProgrammingError,
    QuotaError,
    RejectedError,
    TagError,
    TokenError,
    TokenRefused,
    TokenUnavailable,
    TransientError,
    WeChatError,
)
from worker.wechat.tokens import MemoryTokenStore, RedisTokenStore, TokenProvider

__all__ = [
    "ERRCODES",
    "MAX_BATCH",
    "Action",
    "CredentialError",
    "Errcode",
    "ErrorClass",
    "FansPage",
    "MemoryTokenStore",
    "NetworkError",
    "OpenidError",
    "ProgrammingError",
    "Quota",
    "QuotaError",
    "RedisTokenStore",
    "RejectedError",
    "Tag",
    "TagError",
    "TokenError",
    "TokenProvider",
    "TokenRefused",
    "TokenUnavailable",
    "TransientError",
    "WeChatClient",
    "WeChatError",
    "check_tag_name",
    "lookup",
]
