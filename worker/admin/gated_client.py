"""Admin calls through the account's gate: what ``tagsync tags``, ``reconcile``, the drain
and the export call WeChat with (``admin_client``), and how a command picks its account
(``--account``, the only one served, or ``WECHAT_APPID``: ``open_account``).

Every call takes a slot of the account's rate limit and counts against its daily budget,
like the worker's batches, so an operator's listing never pushes the workers over the
limit (45011) nor spends quota they are owed. A pause in force (the worker's, or one a
call here meets) is waited out when it ends soon, else reported as ``AccountPaused``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

from producers.redis_url import connect
from worker.accounts import Account, Accounts, AccountsConfig, accounts_config
from worker.base.backoff import backoff_ms
from worker.base.settings import Settings, SettingsError
from worker.gate import AccountGate, Pause, pause_for
from worker.tag_names import TagNames
from worker.wechat.client import FansPage, Quota, Tag, WeChatClient, iter_fans
from worker.wechat.errcodes import Action, ErrorClass
from worker.wechat.errors import WeChatError

#: The longest pause an admin call waits out (45011 ends within a minute); a longer one
#: (a day's quota, credentials) stops the command with ``AccountPaused``.
MAX_PAUSE_WAIT_S = 65.0
#: How often a transient failure (-1, timeout, HTTP 5xx) is retried before it is raised.
TRANSIENT_ATTEMPTS = 5
#: How often a call WeChat did not answer at all (refused, timed out, HTTP 5xx) is tried.
NETWORK_ATTEMPTS = 3
#: The first backoff after a transient failure, doubling (with full jitter), capped.
BACKOFF_MS = 1_000
MAX_BACKOFF_MS = 60_000
#: A slot this far ahead (reserved by a busy worker) is still worth waiting for.
MAX_SLOT_WAIT_MS = 10 * 60 * 1000

#: The APIs admin calls use; each may be paused on its own (45009 is counted per API).
ADMIN_APIS = (
    "tags/get",
    "tags/create",
    "tags/update",
    "tags/delete",
    "user/tag/get",
    "tags/getidlist",
    "openapi/quota/get",
)

T = TypeVar("T")


class AccountPaused(Exception):
    """The account (or the API a command needs) is paused for longer than a command waits."""

    def __init__(self, appid: str, api: str, pause: Pause) -> None:
        self.appid = appid
        self.api = api
        self.pause = pause
        left = max(0, int(pause.until - time.time()))
        code = f", errcode {pause.errcode}" if pause.errcode else ""
        super().__init__(
            f"account {appid} is paused for {api} ({pause.reason}{code}) for "
            f"{left // 3600} h {left % 3600 // 60} min more: {pause.message or 'no message'}; "
            "nothing was spent. Run again after the pause, or lift a quota pause with "
            "`tagsync quota reset`"
        )


def notice(text: str) -> None:
    """Tell the operator running a command (stderr; stdout stays the command's output)."""
    print(f"tagsync: {text}", file=sys.stderr, flush=True)


class GatedClient:
    """The seed's admin calls of one account, each through its gate (without a gate, as
    in a one-off command with no Redis, straight to WeChat)."""

    def __init__(
        self,
        client: WeChatClient,
        gate: AccountGate | None,
        *,
        notice: Callable[[str], None] = notice,
        max_pause_wait_s: float = MAX_PAUSE_WAIT_S,
    ) -> None:
        self.client = client
        self.gate = gate
        self.appid = client.appid
        self._notice = notice
        self._max_pause_wait_s = max_pause_wait_s

    def __enter__(self) -> GatedClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.close()

    def list_tags(self) -> list[Tag]:
        """Every tag with its fan count (``tags/get``)."""
        return self._call("tags/get", self.client.list_tags)

    def create_tag(self, name: str) -> Tag:
        """Create a tag (``tags/create``)."""
        tag = self._call("tags/create", lambda: self.client.create_tag(name))
        self._names_changed()
        return tag

    def rename_tag(self, tag_id: int, name: str) -> None:
        """Rename a tag (``tags/update``)."""
        self._call("tags/update", lambda: self.client.rename_tag(tag_id, name))
        self._names_changed()

    def delete_tag(self, tag_id: int) -> None:
        """Delete a tag (``tags/delete``; 45057 over 100,000 fans)."""
        self._call("tags/delete", lambda: self.client.delete_tag(tag_id))
        self._names_changed()

    def _names_changed(self) -> None:
        """The workers' tag name cache learns the change at its next miss, not in 5 min."""
        if self.gate is not None:
            TagNames(self.gate.redis).forget(self.appid)

    def tag_fans(self, tag_id: int, next_openid: str = "") -> FansPage:
        """One page of a tag's fans (``user/tag/get``)."""
        return self._call("user/tag/get", lambda: self.client.tag_fans(tag_id, next_openid))

    def iter_tag_fans(self, tag_id: int) -> Iterator[str]:
        """Every fan of a tag, page after page."""
        return iter_fans(self.tag_fans, tag_id)

    def tags_of_fan(self, openid: str) -> list[int]:
        """The tag ids a fan carries (``tags/getidlist``)."""
        return self._call("tags/getidlist", lambda: self.client.tags_of_fan(openid))

    def get_quota(self, cgi_path: str = "/cgi-bin/tags/members/batchtagging") -> Quota:
        """The daily quota of one API path (``openapi/quota/get``)."""
        return self._call("openapi/quota/get", lambda: self.client.get_quota(cgi_path))

    def _call(self, api: str, call: Callable[[], T]) -> T:
        """``call`` once a slot of ``api`` is had; pauses and transient failures handled."""
        attempt = 0
        while True:
            self._admit(api)
            try:
                return call()
            except WeChatError as exc:
                row = exc.row
                if (
                    self.gate is not None
                    and row.action is Action.PAUSE
                    and row.error_class is ErrorClass.QUOTA
                ):
                    # What the worker would do: the pause protects the account for everyone.
                    # (A credential error is reported, not paused on: this command's
                    # credentials may be wrong where the workers' are right.)
                    ends, reason, _ = pause_for(self.gate, self.appid, exc, api=api)
                    self._notice(f"{api}: {exc}; account paused ({reason}) until {_clock(ends)}")
                    continue
                if row.action not in (Action.RETRY, Action.RETRY_FEW, Action.REFRESH_TOKEN):
                    raise
                attempt += 1
                # WeChat not answering at all is said soon; its -1 is worth more patience.
                if attempt >= (NETWORK_ATTEMPTS if exc.errcode is None else TRANSIENT_ATTEMPTS):
                    raise
                backoff_s = backoff_ms(attempt, min_ms=BACKOFF_MS, max_ms=MAX_BACKOFF_MS) / 1000
                self._notice(f"{api}: {exc}; retrying in {backoff_s:.1f} s")
                time.sleep(backoff_s)

    def _admit(self, api: str) -> None:
        """Take a call slot of ``api``: sleep for it, or wait out (or report) a pause."""
        if self.gate is None:
            return
        slot_at: int | None = None
        while True:
            admission = self.gate.admit(
                self.appid, api=api, slot_at=slot_at, max_sleep_ms=MAX_SLOT_WAIT_MS
            )
            if admission.kind == "go":
                if admission.wait_ms:
                    time.sleep(admission.wait_ms / 1000)
                return
            if admission.kind == "wait":  # a slot further ahead than we sleep: come back
                slot_at = admission.slot_at  # for it, not for a new one
                time.sleep(min(admission.wait_ms, MAX_SLOT_WAIT_MS) / 1000)
                continue
            pauses = self.gate.pauses(self.appid, (api,))
            pause = pauses.get("account") or pauses.get(api)
            if pause is None:  # lifted meanwhile, or a budget pause read as gone: look again
                time.sleep(min(admission.wait_ms, 1000) / 1000)
                continue
            left = pause.until - time.time()
            if left > self._max_pause_wait_s:
                raise AccountPaused(self.appid, api, pause)
            self._notice(
                f"account {self.appid} paused ({pause.reason}, errcode {pause.errcode or '-'}); "
                f"waiting {left:.0f} s"
            )
            time.sleep(max(0.05, left))


def _clock(epoch: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(epoch))


def served(settings: Settings) -> tuple[AccountsConfig, Accounts | None]:
    """The accounts config and, with Redis, the live directory (authorized accounts too)."""
    config = accounts_config(settings)
    if not settings.redis_url:
        return config, None
    connection = connect(settings.redis_url)
    return config, Accounts(
        config, redis=connection, api_base=settings.api_base, read_timeout=settings.wechat_timeout_s
    )


def choose_appid(settings: Settings, requested: str | None, appids: frozenset[str]) -> str:
    """The account a command is about: ``--account``, the only one, or ``WECHAT_APPID``."""
    if requested is not None:
        if requested not in appids:
            raise SettingsError(f"--account {requested}: not an account of this deployment")
        return requested
    if len(appids) == 1:
        return next(iter(appids))
    if settings.appid and settings.appid in appids:
        return settings.appid
    listed = ", ".join(sorted(appids)[:5]) + (" ..." if len(appids) > 5 else "")
    raise SettingsError(f"{len(appids)} accounts are served ({listed}): name one with --account")


def open_account(settings: Settings, requested: str | None = None) -> Account | WeChatClient:
    """The account (with Redis: client and gate) or, without Redis, a bare client."""
    config, directory = served(settings)
    if directory is None:
        appid = choose_appid(settings, requested, frozenset(a.appid for a in config.accounts))
        account = config.get(appid)
        assert account is not None
        return WeChatClient(
            appid=appid,
            secret=account.secret,
            api_base=settings.api_base,
            token_mode=account.limits.token_mode,
        )
    appid = choose_appid(settings, requested, directory.appids())
    found = directory.get(appid)
    assert found is not None
    return found


def admin_client(settings: Settings, account: str | None = None) -> GatedClient:
    """The client an admin command calls WeChat with: through the account's gate (rate,
    daily budget and pauses shared with the worker) when Redis is set."""
    opened = open_account(settings, account)
    if isinstance(opened, Account):
        return GatedClient(opened.client, opened.gate)
    return GatedClient(opened, None)
