"""The accounts a deployment serves, from ``TAGSYNC_ACCOUNTS`` (a TOML file) or the
one-account shortcut ``WECHAT_APPID``/``WECHAT_SECRET``.

A file names Official Accounts with their own secrets and, optionally, one WeChat Open
Platform third-party platform (``[component]``) whose merchants' accounts are authorized
at run time (``worker.accounts.authorized``). Every error names the file, the line and the
key, so a bad file stops the worker before it starts.
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import structlog

from worker.observability.redaction import Secret
from worker.wechat.push import PushCrypto

log = structlog.get_logger("tagsync.accounts")

#: An AppID as WeChat issues them: "wx" and 16 hex digits; tests and demos use other
#: short ids, so any 1-32 characters of letters, digits, "_" and "-" are accepted.
APPID_RE = re.compile(r"[A-Za-z0-9_-]{1,32}")
#: The keys an account may set (``appid`` and ``secret`` are required in ``[[accounts]]``).
ACCOUNT_KEYS = frozenset(
    {"appid", "secret", "rate", "burst", "daily_budget", "token_mode", "push_token", "push_aes_key"}
)
#: The keys ``[defaults]`` may set: every per-account key but the account's identity and keys.
DEFAULT_KEYS = ACCOUNT_KEYS - {"appid", "secret", "push_token", "push_aes_key"}
#: The keys ``[component]`` may set.
COMPONENT_KEYS = frozenset({"appid", "secret", "push_token", "push_aes_key"})

TokenMode = Literal["stable", "classic"]


class AccountsFileError(ValueError):
    """The accounts file is unreadable or malformed; the message names line and key."""


@dataclass(frozen=True)
class Limits:
    """An account's own rate, burst, daily budget and token mode."""

    rate: float = 20.0
    burst: int = 1
    daily_budget: int | None = None
    token_mode: TokenMode = "stable"


@dataclass(frozen=True)
class PushKeys:
    """What WeChat's pushes to an AppID's server are checked with: the server's token
    (signatures) and, in safe mode, its EncodingAESKey (the AES envelope)."""

    token: Secret = field(repr=False)
    aes_key: Secret | None = field(default=None, repr=False)

    def crypto(self, appid: str) -> PushCrypto | None:
        """The safe-mode envelope's opener for ``appid`` (None in plain mode)."""
        if self.aes_key is None:
            return None
        return PushCrypto(
            token=self.token.reveal(), encoding_aes_key=self.aes_key.reveal(), appid=appid
        )


@dataclass(frozen=True)
class AccountConfig:
    """One Official Account: its AppID, how its tokens are had, and its limits.

    ``secret`` is None for an account authorized through the component: its tokens come
    from ``api_authorizer_token`` with the refresh token kept in Redis.
    """

    appid: str
    secret: Secret | None = field(default=None, repr=False)
    limits: Limits = Limits()
    #: The account's own push keys (its server configuration), if it takes pushes.
    push: PushKeys | None = None

    @property
    def via_component(self) -> bool:
        """True when the account's tokens come through the Open Platform component."""
        return self.secret is None


@dataclass(frozen=True)
class ComponentConfig:
    """A WeChat Open Platform third-party platform (``component_appid``/``appsecret``)."""

    appid: str
    secret: Secret = field(repr=False)
    #: Limits of the accounts authorized to it (its ``[defaults]``).
    limits: Limits = Limits()
    #: The platform's push keys: its pushes, and its authorized accounts' (safe mode).
    push: PushKeys | None = None


@dataclass(frozen=True)
class AccountsConfig:
    """Everything the accounts file (or the one-account shortcut) says."""

    accounts: tuple[AccountConfig, ...]
    component: ComponentConfig | None = None
    #: Limits of accounts authorized at run time.
    defaults: Limits = Limits()
    source: str = "environment"

    def get(self, appid: str) -> AccountConfig | None:
        """The configured account ``appid``, if any."""
        return next((a for a in self.accounts if a.appid == appid), None)


def _line_of(text: str, key: str, *, table: str | None, index: int = 0) -> int | None:
    """The line where ``key`` is set inside ``table`` (the ``index``-th ``[[table]]``)."""
    lines = text.splitlines()
    start, seen = 0, -1
    if table is not None:
        header = re.compile(rf"^\s*\[\[?\s*{re.escape(table)}\s*\]\]?\s*(#.*)?$")
        for number, line in enumerate(lines):
            if header.match(line):
                seen += 1
                if seen == index:
                    start = number
                    break
        else:
            return None
        if key == "":
            return start + 1
    assignment = re.compile(rf"^\s*{re.escape(key)}\s*=")
    for number in range(start + (table is not None), len(lines)):
        if table is not None and lines[number].lstrip().startswith("[") and number > start:
            break
        if assignment.match(lines[number]):
            return number + 1
    return None


class _Reader:
    """Checks one parsed file, raising errors that name the line and key."""

    def __init__(self, path: str, text: str, env: Mapping[str, str]) -> None:
        self.path, self.text, self.env = path, text, env

    def fail(
        self, message: str, *, key: str, table: str | None, index: int = 0
    ) -> AccountsFileError:
        line = _line_of(self.text, key, table=table, index=index)
        where = f"{self.path}:{line}" if line else self.path
        name = (
            f"{table}[{index}].{key}"
            if table == "accounts"
            else (f"{table}.{key}" if table else key)
        )
        return AccountsFileError(f"{where}: {name.rstrip('.')}: {message}")

    def limits(self, raw: Mapping[str, Any], base: Limits, *, table: str, index: int = 0) -> Limits:
        changes: dict[str, Any] = {}
        if "rate" in raw:
            rate = raw["rate"]
            # TOML has nan and inf: neither is a rate the Lua scripts can work with.
            if (
                isinstance(rate, bool)
                or not isinstance(rate, int | float)
                or not (0 < rate < math.inf)
            ):
                raise self.fail(
                    "must be a positive, finite number (calls/s)",
                    key="rate",
                    table=table,
                    index=index,
                )
            changes["rate"] = float(rate)
        for key, minimum in (("burst", 1), ("daily_budget", 0)):
            if key in raw:
                value = raw[key]
                if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                    raise self.fail(
                        f"must be a whole number >= {minimum}", key=key, table=table, index=index
                    )
                changes[key] = value if key == "burst" else (value or None)
        if "token_mode" in raw:
            if raw["token_mode"] not in ("stable", "classic"):
                raise self.fail(
                    "must be 'stable' or 'classic'", key="token_mode", table=table, index=index
                )
            changes["token_mode"] = raw["token_mode"]
        return replace(base, **changes)

    def unknown(
        self, raw: Mapping[str, Any], allowed: frozenset[str], *, table: str | None, index: int = 0
    ) -> None:
        for key in raw:
            if key not in allowed:
                raise self.fail(
                    f"unknown key (allowed: {', '.join(sorted(allowed))})",
                    key=key,
                    table=table,
                    index=index,
                )

    def appid(self, raw: Mapping[str, Any], *, table: str, index: int = 0) -> str:
        value = raw.get("appid")
        if value is None:
            raise self.fail("is required", key="", table=table, index=index)
        if not isinstance(value, str) or not APPID_RE.fullmatch(value):
            raise self.fail(
                "must be 1-32 letters, digits, '_' or '-'", key="appid", table=table, index=index
            )
        return value

    def secret(
        self, raw: Mapping[str, Any], *, table: str, index: int = 0, key: str = "secret"
    ) -> Secret:
        value = raw.get(key)
        if value is None:
            raise self.fail(
                "is required (env:NAME reads a variable, file:PATH a file)",
                key="",
                table=table,
                index=index,
            )
        if not isinstance(value, str) or not value:
            raise self.fail("must be a string", key=key, table=table, index=index)
        if value.startswith("env:"):
            name = value.removeprefix("env:")
            resolved = self.env.get(name, "")
            if not resolved:
                raise self.fail(
                    f"the variable {name} is not set", key=key, table=table, index=index
                )
            return Secret(resolved)
        if value.startswith("file:"):
            # A mounted secret (Kubernetes, Docker, systemd credentials): an account added to
            # the file while workers run needs no variable they were started without.
            where = Path(self.path).parent / value.removeprefix("file:")
            try:
                content = where.read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError) as exc:
                raise self.fail(
                    f"cannot read {where}: {getattr(exc, 'strerror', None) or exc}",
                    key=key,
                    table=table,
                    index=index,
                ) from None
            if not content:
                raise self.fail(f"{where} is empty", key=key, table=table, index=index)
            return Secret(content)
        line = _line_of(self.text, key, table=table, index=index)
        log.warning(
            "accounts.literal_secret",
            file=self.path,
            line=line,
            hint="keep the secret out of the file: env:NAME (a variable) or file:PATH",
        )
        return Secret(value)

    def push_keys(self, raw: Mapping[str, Any], *, table: str, index: int = 0) -> PushKeys | None:
        """``push_token`` (and ``push_aes_key`` for safe mode), if the table sets them."""
        if "push_token" not in raw:
            if "push_aes_key" in raw:
                raise self.fail(
                    "needs push_token too", key="push_aes_key", table=table, index=index
                )
            return None
        token = self.secret(raw, table=table, index=index, key="push_token")
        aes_key = None
        if "push_aes_key" in raw:
            aes_key = self.secret(raw, table=table, index=index, key="push_aes_key")
            try:
                PushCrypto(token="", encoding_aes_key=aes_key.reveal(), appid="")
            except ValueError as exc:
                raise self.fail(str(exc), key="push_aes_key", table=table, index=index) from None
        return PushKeys(token, aes_key)


def load_accounts_file(
    path: str | Path, env: Mapping[str, str] | None = None, *, base: Limits = Limits()
) -> AccountsConfig:
    """Read and check an accounts file; ``AccountsFileError`` names the line and key."""
    env = os.environ if env is None else env
    name = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise AccountsFileError(f"{name}: cannot read the accounts file: {exc}") from None
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise AccountsFileError(f"{name}: not valid TOML: {exc}") from None
    reader = _Reader(name, text, env)
    reader.unknown(document, frozenset({"defaults", "accounts", "component"}), table=None)
    raw_defaults = document.get("defaults", {})
    if not isinstance(raw_defaults, dict):
        raise reader.fail("must be a table", key="defaults", table=None)
    reader.unknown(raw_defaults, DEFAULT_KEYS, table="defaults")
    defaults = reader.limits(raw_defaults, base, table="defaults")
    raw_accounts = document.get("accounts", [])
    if not isinstance(raw_accounts, list) or not all(isinstance(a, dict) for a in raw_accounts):
        raise reader.fail("must be [[accounts]] tables", key="accounts", table=None)
    accounts: list[AccountConfig] = []
    for index, raw in enumerate(raw_accounts):
        reader.unknown(raw, ACCOUNT_KEYS, table="accounts", index=index)
        appid = reader.appid(raw, table="accounts", index=index)
        if any(a.appid == appid for a in accounts):
            raise reader.fail(
                f"{appid} is listed twice", key="appid", table="accounts", index=index
            )
        accounts.append(
            AccountConfig(
                appid,
                reader.secret(raw, table="accounts", index=index),
                reader.limits(raw, defaults, table="accounts", index=index),
                reader.push_keys(raw, table="accounts", index=index),
            )
        )
    component = None
    if "component" in document:
        raw_component = document["component"]
        if not isinstance(raw_component, dict):
            raise reader.fail("must be a table", key="component", table=None)
        reader.unknown(raw_component, COMPONENT_KEYS, table="component")
        component = ComponentConfig(
            reader.appid(raw_component, table="component"),
            reader.secret(raw_component, table="component"),
            defaults,
            reader.push_keys(raw_component, table="component"),
        )
    if not accounts and component is None:
        raise AccountsFileError(f"{name}: names no [[accounts]] and no [component]")
    return AccountsConfig(tuple(accounts), component, defaults, source=name)
