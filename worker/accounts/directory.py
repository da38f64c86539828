"""The accounts a worker process serves, each with its own WeChat client and gate.

Parts are built on first use, so an idle account costs nothing but a line in the file (or
a field in Redis). Changes are picked up without a restart:
- the accounts file: at every look the directory compares its modification time, size and
  inode (one stat; the file is read again only when they moved). An added account is
  served, a removed one is not (its intents are kept), a changed one gets new parts. A
  file that no longer reads keeps the accounts as they were, with an error in the log;
- accounts authorized at run time: at most every ``RELOAD_INTERVAL_S``, and at once when
  asked for an account it does not know, it compares Redis's change counter (one GET; the
  set is read again only when the counter moved).
Threads that ask while another reloads wait for its answer. No thread polls anything per
account.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Protocol

import structlog
from redis import Redis

from worker.accounts.authorized import AuthorizedAccounts
from worker.accounts.component import Component
from worker.accounts.config import AccountConfig, AccountsConfig
from worker.accounts.controls import limits_set, limits_version
from worker.gate import AccountGate
from worker.observability.metrics import RATE_LIMIT_DEFERRALS
from worker.wechat.client import Pool, WeChatClient, pooled_session

log = structlog.get_logger("tagsync.accounts")

#: How often a process looks whether accounts were authorized or removed (a change is
#: picked up within this, well inside the 10 s promised).
RELOAD_INTERVAL_S = 2.0
#: Connections kept per host by the shared pool (one pool for every account's client).
POOL_SIZE = 64


@dataclass(frozen=True)
class Account:
    """One served account: its settings, WeChat client and gate."""

    config: AccountConfig
    client: WeChatClient
    gate: AccountGate

    @property
    def appid(self) -> str:
        """The account's AppID."""
        return self.config.appid


class AccountDirectory(Protocol):
    """What the pipeline asks about accounts."""

    def get(self, appid: str) -> Account | None:
        """The served account ``appid``, or None."""
        ...

    def appids(self) -> frozenset[str]:
        """Every served AppID."""
        ...

    def __contains__(self, appid: object) -> bool: ...


class StaticAccounts:
    """A fixed set of accounts (one-off commands, tests)."""

    def __init__(self, *accounts: Account) -> None:
        self._accounts = {a.appid: a for a in accounts}

    def get(self, appid: str) -> Account | None:
        return self._accounts.get(appid)

    def appids(self) -> frozenset[str]:
        return frozenset(self._accounts)

    def __contains__(self, appid: object) -> bool:
        return appid in self._accounts

    def __iter__(self) -> Iterator[Account]:
        return iter(self._accounts.values())


class Accounts:
    """The live directory: the configured accounts plus those authorized to the component."""

    def __init__(
        self,
        config: AccountsConfig,
        *,
        redis: Redis,
        api_base: str,
        read_timeout: float = 10.0,
        session: Pool | None = None,
        reload_file: Callable[[], AccountsConfig] | None = None,
    ) -> None:
        self.config = config
        #: Reads the accounts file again (None: the configured accounts never change).
        self._reload_file = reload_file if _is_file(config.source) else None
        self._file_seen = _signature(config.source) if self._reload_file else None
        self.redis = redis
        self.api_base = api_base
        self.read_timeout = read_timeout
        self._session = session or pooled_session(POOL_SIZE, api_base=api_base)
        self._authorized_store = AuthorizedAccounts(redis)
        self.component = (
            Component(
                config.component,
                redis=redis,
                api_base=api_base,
                session=self._session,
                read_timeout=read_timeout,
            )
            if config.component is not None
            else None
        )
        self._configured = {a.appid: a for a in config.accounts}
        self._lock = threading.Lock()
        self._built: dict[str, Account] = {}
        self._authorized: frozenset[str] = frozenset()
        #: Configured and authorized AppIDs, set at each reload (asked on every flush).
        self._served: frozenset[str] = frozenset(self._configured)
        self._version: int | None = None
        self._limits_version: int | None = None
        self._checked_at = -1e9
        self._reload_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Accounts(configured={len(self._configured)}, authorized={len(self._authorized)})"

    def appids(self) -> frozenset[str]:
        """Every served AppID (configured and authorized)."""
        self._refresh()
        return self._served

    def __contains__(self, appid: object) -> bool:
        return isinstance(appid, str) and self.get(appid) is not None

    def get(self, appid: str) -> Account | None:
        """The account ``appid`` with its parts, built on first use; None if not served."""
        self._refresh()
        if appid not in self._served:
            # Maybe authorized a moment ago: look at the change counter now.
            self._refresh(force=True)
        with self._lock:
            built = self._built.get(appid)
            if built is not None:
                return built
            config = self._configured.get(appid)
            if config is None and appid in self._authorized and self.component is not None:
                config = AccountConfig(appid, None, self.config.defaults)
            if config is None:
                return None
            built = self._build(config)
            self._built[appid] = built
            return built

    def _build(self, config: AccountConfig) -> Account:
        limits = config.limits
        overrides = limits_set(self.redis, config.appid)
        if overrides is not None:
            limits = replace(
                limits,
                rate=overrides.rate if overrides.rate is not None else limits.rate,
                burst=overrides.burst if overrides.burst is not None else limits.burst,
                daily_budget=(
                    (overrides.daily_budget or None)
                    if overrides.daily_budget is not None
                    else limits.daily_budget
                ),
            )
        # At 0 from the start: a rate over the account's deferrals has data before the first.
        RATE_LIMIT_DEFERRALS.labels(config.appid)
        fetch = None
        if config.via_component:
            assert self.component is not None
            fetch = self.component.authorizer_fetcher(config.appid)
        client = WeChatClient(
            appid=config.appid,
            secret=config.secret,
            api_base=self.api_base,
            token_mode=limits.token_mode,
            redis=self.redis,
            read_timeout=self.read_timeout,
            session=self._session,
            fetch=fetch,
        )
        gate = AccountGate(
            self.redis, rate=limits.rate, burst=limits.burst, daily_budget=limits.daily_budget
        )
        return Account(config, client, gate)

    def _refresh(self, *, force: bool = False) -> None:
        # The file at every look: a stat costs microseconds, and an edit then takes effect
        # at the next intent or flush, in every process alike.
        if self._reload_file is not None and _signature(self.config.source) != self._file_seen:
            with self._reload_lock:
                self._reload_configured()
        if not force and time.monotonic() - self._checked_at < RELOAD_INTERVAL_S:
            return
        with self._reload_lock:
            if not force and time.monotonic() - self._checked_at < RELOAD_INTERVAL_S:
                return  # another thread reloaded while this one waited
            self._checked_at = time.monotonic()
            self._reload_limits()
            if self.component is not None:
                self._reload()

    def _reload_limits(self) -> None:
        """Limits set at run time (``tagsync limits``) changed: rebuild every account's parts
        (gates take their limits when built; a flush in progress finishes with the old)."""
        version = limits_version(self.redis)
        if version == self._limits_version:
            return
        with self._lock:
            self._built.clear()
        if self._limits_version is not None:
            log.info("accounts.limits_changed", version=version)
        self._limits_version = version

    def _reload_configured(self) -> None:
        """Read the accounts file again if it changed; apply its accounts and defaults."""
        assert self._reload_file is not None
        seen = _signature(self.config.source)
        if seen == self._file_seen:
            return  # another thread read it while this one waited
        try:
            config = self._reload_file()
        except ValueError as exc:  # a file half written or wrong: serve what was served
            self._file_seen = seen  # logged once, read again when it changes
            log.error("accounts.file_invalid", file=self.config.source, error=str(exc))
            return
        if _signature(self.config.source) != seen:
            return  # written to while it was read: read it again at the next look
        self._file_seen = seen
        if config.component != self.config.component:
            log.warning(
                "accounts.component_changed",
                hint="the [component] table is read at start: restart the workers to apply it",
            )
        configured = {a.appid: a for a in config.accounts}
        with self._lock:
            previous = self._configured
            changed = {a for a in previous if configured.get(a) != previous[a]}
            if config.defaults != self.config.defaults:
                # Authorized accounts take the defaults: rebuilt with the new ones.
                changed |= self._authorized - set(previous)
            for appid in changed:
                self._built.pop(appid, None)
            self._configured = configured
            self.config = AccountsConfig(
                config.accounts, self.config.component, config.defaults, config.source
            )
            self._served = frozenset(configured) | self._authorized
        added = set(configured) - set(previous)
        log.info(
            "accounts.file_reloaded",
            added=sorted(added),
            removed=sorted(set(previous) - set(configured)),
            changed=sorted(changed - added),
            served=len(self._served),
        )

    def _reload(self) -> None:
        """Read the change counter; read the authorized set again if it moved."""
        self._checked_at = time.monotonic()
        version = self._authorized_store.version()
        if version == self._version:
            return
        authorized = frozenset(self._authorized_store.appids())
        with self._lock:
            removed = self._authorized - authorized
            for appid in removed:
                if appid not in self._configured:
                    self._built.pop(appid, None)
            added = authorized - self._authorized
            self._authorized, self._version = authorized, version
            self._served = frozenset(self._configured) | authorized
        if added or removed:
            log.info(
                "accounts.reloaded",
                added=len(added),
                removed=len(removed),
                served=len(self._served),
            )


def _is_file(source: str) -> bool:
    """Is the accounts config's source a file (not the environment's one account)?"""
    return source != "environment" and os.path.isfile(source)


def _signature(path: str) -> tuple[int, int, int] | None:
    """What tells a changed file from an unchanged one without reading it (None: gone)."""
    try:
        status = os.stat(path)
    except OSError:
        return None
    return status.st_mtime_ns, status.st_size, status.st_ino
