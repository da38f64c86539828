"""The accounts a worker process serves, each with its own WeChat client and gate.

Parts are built on first use, so an idle account costs nothing but a line in the file (or
a field in Redis). Accounts authorized at run time are picked up without a restart: the
directory compares Redis's change counter at most every ``RELOAD_INTERVAL_S`` when asked,
and at once when asked for an account it does not know (one GET; the set is read again
only when the counter moved). Threads that ask while another reloads wait for its answer.
No thread polls anything per account.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import requests
import structlog
from redis import Redis

from worker.accounts.authorized import AuthorizedAccounts
from worker.accounts.component import Component
from worker.accounts.config import AccountConfig, AccountsConfig
from worker.gate import AccountGate
from worker.wechat.client import WeChatClient, pooled_session

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
        session: requests.Session | None = None,
    ) -> None:
        self.config = config
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
        if self.component is None:
            return  # nothing is authorized at run time without a component
        if not force and time.monotonic() - self._checked_at < RELOAD_INTERVAL_S:
            return
        with self._reload_lock:
            if not force and time.monotonic() - self._checked_at < RELOAD_INTERVAL_S:
                return  # another thread reloaded while this one waited
            self._reload()

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
