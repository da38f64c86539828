"""tagsync's settings, read from the environment (12-factor) and checked once at start."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal, TypeVar
from urllib.parse import urlsplit

from producers.redis_url import RedisUrlError, check_scheme, queue_url
from worker.observability.redaction import Secret

T = TypeVar("T")

#: WeChat's API, where every call goes unless ``WECHAT_API_BASE`` says otherwise.
DEFAULT_API_BASE = "https://api.weixin.qq.com"

#: The variables tagsync reads, with what each one means (``tagsync --help`` shows them).
VARIABLES: dict[str, str] = {
    "TAGSYNC_REDIS_URL": (
        "Redis for pending intents, tokens, limits (and the queue unless TAGSYNC_QUEUE_URL): "
        "redis://, rediss:// (TLS), redis+sentinel://[:password@]host:port,host:port/MASTER[/db] "
        "or redis+cluster://[:password@]host:port,host:port"
    ),
    "TAGSYNC_QUEUE_URL": (
        "Redis of the dramatiq queue (default TAGSYNC_REDIS_URL); a plain or Sentinel one: "
        "required when TAGSYNC_REDIS_URL is a cluster"
    ),
    "TAGSYNC_REDIS_WAIT_REPLICAS": "producers return once N replicas hold intents (default 0)",
    "TAGSYNC_REDIS_WAIT_MS": "how long producers wait for those replicas (default 1000)",
    "TAGSYNC_INGEST_MAX_INTENTS": "most intents in one HTTP ingest request (default 20000)",
    "TAGSYNC_ACCOUNTS": (
        "TOML file of accounts and an Open Platform component (docs/many-accounts.md)"
    ),
    "WECHAT_APPID": "the Official Account's AppID; also the default intent account",
    "WECHAT_SECRET": "the app secret (never logged)",
    "WECHAT_API_BASE": f"WeChat's API base URL (default {DEFAULT_API_BASE})",
    "WECHAT_TOKEN_MODE": "stable (POST stable_token, default) or classic (GET token)",
    "WECHAT_PUSH_TOKEN": "the Token of the account's server configuration (its pushes)",
    "WECHAT_PUSH_AES_KEY": "its EncodingAESKey, for pushes in safe mode (43 characters)",
    "TAGSYNC_RATE": "WeChat calls per second, all workers together (default 20)",
    "TAGSYNC_BURST": "calls allowed back to back after a quiet spell (default 1: strict rate)",
    "TAGSYNC_DAILY_BUDGET": "WeChat calls per Asia/Shanghai day (default: no budget)",
    "TAGSYNC_LINGER_MS": "how long a partial batch waits for more intents (default 1000)",
    "TAGSYNC_MAX_ATTEMPTS": "attempts before an intent is dead-lettered (default 30)",
    "TAGSYNC_BACKOFF_MIN_MS": "first retry backoff (default 1000)",
    "TAGSYNC_BACKOFF_MAX_MS": "longest retry backoff (default 300000)",
    "TAGSYNC_ORDERING_WINDOW": "seconds an out-of-order intent may lag (default 3600)",
    "TAGSYNC_HISTORY_HOURS": "hours each fan's last intent per tag is kept for `tagsync explain` "
    "(default 24; 0: none)",
    "TAGSYNC_METRICS_PORT": "port of the Prometheus metrics (default 9191)",
    "TAGSYNC_METRICS_HOST": "address the metrics endpoint binds (default 0.0.0.0)",
    "TAGSYNC_LOG_FORMAT": "json or console (default: console on a terminal, else json)",
    "TAGSYNC_INGEST_TOKEN": "bearer token the HTTP ingest requires",
    "TAGSYNC_WECHAT_TIMEOUT_S": "read timeout of a WeChat call; leases outlive it (default 10)",
    "TAGSYNC_DLQ_MAX_LEN": "about how many dead letters are kept (default 100000)",
    "TAGSYNC_CREATE_TAGS": "1: intents naming an unknown tag create it (default 0: unknown_tag)",
}


class SettingsError(ValueError):
    """A setting is missing or malformed; the message names the variable."""


def _number(
    env: Mapping[str, str], name: str, default: T, cast: Callable[[str], T], *, minimum: float
) -> T:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = cast(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a {cast.__name__}") from None
    number = float(value)  # type: ignore[arg-type]
    # nan passes every comparison and inf would reach the Lua scripts as a rate: both out.
    if not math.isfinite(number):
        raise SettingsError(f"{name}={raw!r} must be a finite number")
    if number < minimum:
        raise SettingsError(f"{name}={raw!r} must be at least {minimum:g}")
    return value


def check_api_base(api_base: str) -> None:
    """Refuse a ``WECHAT_API_BASE`` that is not an http(s) URL with a host (requests would
    fail every call with a bare ``InvalidSchema``)."""
    parts = urlsplit(api_base)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SettingsError(
            f"WECHAT_API_BASE={api_base!r} must be an http:// or https:// URL with a host, "
            f"e.g. {DEFAULT_API_BASE}"
        )


@dataclass(frozen=True)
class Settings:
    """Every tagsync setting, with production-safe defaults."""

    redis_url: str | None = None
    #: The dramatiq queue's Redis (``TAGSYNC_QUEUE_URL``; default: ``redis_url``).
    queue_url: str | None = None
    #: ``TAGSYNC_REDIS_WAIT_REPLICAS`` and ``_MS``: replicas that must hold what producers
    #: enqueue (and, with the queue on its own Redis, what ingest merges), and how long to
    #: wait for them.
    wait_replicas: int = 0
    wait_ms: int = 1000
    accounts_file: str | None = None
    appid: str | None = None
    secret: Secret | None = field(default=None, repr=False)
    api_base: str = DEFAULT_API_BASE
    token_mode: Literal["stable", "classic"] = "stable"
    rate: float = 20.0
    burst: int = 1
    daily_budget: int | None = None
    linger_ms: int = 1000
    max_attempts: int = 30
    backoff_min_ms: int = 1000
    backoff_max_ms: int = 300_000
    ordering_window_s: float = 3600.0
    history_s: float = 24 * 3600.0
    metrics_port: int = 9191
    #: All interfaces by default: Prometheus scrapes from another host in production.
    metrics_host: str = "0.0.0.0"  # noqa: S104
    log_format: Literal["json", "console"] | None = None
    ingest_token: Secret | None = field(default=None, repr=False)
    push_token: Secret | None = field(default=None, repr=False)
    push_aes_key: Secret | None = field(default=None, repr=False)
    wechat_timeout_s: float = 10.0
    dlq_max_len: int = 100_000
    create_tags: bool = False

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read the settings from ``env`` (default ``os.environ``); raise ``SettingsError``."""
        env = os.environ if env is None else env
        mode = env.get("WECHAT_TOKEN_MODE", "stable").strip() or "stable"
        if mode not in ("stable", "classic"):
            raise SettingsError(f"WECHAT_TOKEN_MODE={mode!r} must be 'stable' or 'classic'")
        log_format = env.get("TAGSYNC_LOG_FORMAT", "").strip() or None
        if log_format not in (None, "json", "console"):
            raise SettingsError(f"TAGSYNC_LOG_FORMAT={log_format!r} must be 'json' or 'console'")
        budget = _number(env, "TAGSYNC_DAILY_BUDGET", 0, int, minimum=0)
        rate = _number(env, "TAGSYNC_RATE", 20.0, float, minimum=0.001)
        api_base = (env.get("WECHAT_API_BASE", "").strip() or DEFAULT_API_BASE).rstrip("/")
        check_api_base(api_base)
        create = env.get("TAGSYNC_CREATE_TAGS", "").strip().lower()
        if create not in ("", "0", "1", "true", "false", "yes", "no"):
            raise SettingsError(f"TAGSYNC_CREATE_TAGS={create!r} must be 1 or 0")
        redis_url = env.get("TAGSYNC_REDIS_URL", "").strip() or None
        try:
            if redis_url:
                check_scheme(redis_url)
            queue = queue_url(env)
        except RedisUrlError as exc:
            raise SettingsError(str(exc)) from None
        wait_replicas = _number(env, "TAGSYNC_REDIS_WAIT_REPLICAS", 0, int, minimum=0)
        wait_ms = _number(env, "TAGSYNC_REDIS_WAIT_MS", 1000, int, minimum=0)
        settings = cls(
            redis_url=redis_url,
            queue_url=queue,
            wait_replicas=wait_replicas,
            wait_ms=wait_ms,
            accounts_file=env.get("TAGSYNC_ACCOUNTS", "").strip() or None,
            appid=env.get("WECHAT_APPID", "").strip() or None,
            secret=Secret(env["WECHAT_SECRET"]) if env.get("WECHAT_SECRET") else None,
            api_base=api_base,
            token_mode=mode,  # type: ignore[arg-type]
            rate=rate,
            burst=_number(env, "TAGSYNC_BURST", 1, int, minimum=1),
            daily_budget=budget or None,
            linger_ms=_number(env, "TAGSYNC_LINGER_MS", 1000, int, minimum=0),
            max_attempts=_number(env, "TAGSYNC_MAX_ATTEMPTS", 30, int, minimum=1),
            backoff_min_ms=_number(env, "TAGSYNC_BACKOFF_MIN_MS", 1000, int, minimum=1),
            backoff_max_ms=_number(env, "TAGSYNC_BACKOFF_MAX_MS", 300_000, int, minimum=1),
            ordering_window_s=_number(env, "TAGSYNC_ORDERING_WINDOW", 3600.0, float, minimum=0),
            history_s=3600 * _number(env, "TAGSYNC_HISTORY_HOURS", 24.0, float, minimum=0),
            metrics_port=_number(env, "TAGSYNC_METRICS_PORT", 9191, int, minimum=0),
            metrics_host=env.get("TAGSYNC_METRICS_HOST", "").strip() or "0.0.0.0",  # noqa: S104
            wechat_timeout_s=_number(env, "TAGSYNC_WECHAT_TIMEOUT_S", 10.0, float, minimum=0.1),
            dlq_max_len=_number(env, "TAGSYNC_DLQ_MAX_LEN", 100_000, int, minimum=1),
            create_tags=create in ("1", "true", "yes"),
            log_format=log_format,  # type: ignore[arg-type]
            ingest_token=(
                Secret(env["TAGSYNC_INGEST_TOKEN"]) if env.get("TAGSYNC_INGEST_TOKEN") else None
            ),
            push_token=Secret(env["WECHAT_PUSH_TOKEN"]) if env.get("WECHAT_PUSH_TOKEN") else None,
            push_aes_key=(
                Secret(env["WECHAT_PUSH_AES_KEY"]) if env.get("WECHAT_PUSH_AES_KEY") else None
            ),
        )
        if settings.push_aes_key is not None and (
            settings.push_token is None or len(settings.push_aes_key.reveal()) != 43
        ):
            raise SettingsError(
                "WECHAT_PUSH_AES_KEY is 43 characters and needs WECHAT_PUSH_TOKEN too"
            )
        if settings.backoff_max_ms < settings.backoff_min_ms:
            raise SettingsError("TAGSYNC_BACKOFF_MAX_MS must be at least TAGSYNC_BACKOFF_MIN_MS")
        return settings

    def require_wechat(self) -> tuple[str, Secret]:
        """The AppID and secret, or a ``SettingsError`` saying which is missing."""
        missing = [
            n for n, v in (("WECHAT_APPID", self.appid), ("WECHAT_SECRET", self.secret)) if not v
        ]
        if missing:
            raise SettingsError(f"{' and '.join(missing)} must be set")
        assert self.appid is not None and self.secret is not None
        return self.appid, self.secret

    def require_redis_url(self, why: str = "") -> str:
        """``TAGSYNC_REDIS_URL``, or a ``SettingsError`` saying it must be set (and ``why``)."""
        if not self.redis_url:
            raise SettingsError("TAGSYNC_REDIS_URL must be set" + (f" {why}" if why else ""))
        return self.redis_url

    def require_queue_url(self) -> str:
        """The queue's Redis URL (``TAGSYNC_QUEUE_URL``, else ``TAGSYNC_REDIS_URL``)."""
        self.require_redis_url()
        assert self.queue_url is not None  # from_env sets it whenever redis_url is
        return self.queue_url

    def require_ingest(self) -> None:
        """A ``SettingsError`` unless the ingest has its Redis and its bearer token."""
        self.require_redis_url()
        if self.ingest_token is None:
            raise SettingsError(
                "TAGSYNC_INGEST_TOKEN must be set: the ingest refuses unauthenticated intents"
            )
