"""Many Official Accounts in one deployment, including Open Platform authorizations.

    TAGSYNC_ACCOUNTS (TOML) or WECHAT_APPID/SECRET -> ``config.py``: AccountsConfig
    accounts authorized at run time (Redis)        -> ``authorized.py``: refresh tokens, ticket
    component_access_token, authorizer tokens       -> ``component.py``: Component
    each served account's client and gate           -> ``directory.py``: Accounts
    an authorization stored, a revoked one's pause lifted -> ``authorize.py``
    an account's pending intents dead-lettered      -> ``purge.py``

Everything else in the pipeline is keyed by account already: pending buffers, leases,
gates, pauses, tokens and dead letters carry the AppID in their Redis keys.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from worker.accounts.config import (
    AccountConfig,
    AccountsConfig,
    AccountsFileError,
    Limits,
    PushKeys,
    load_accounts_file,
)
from worker.accounts.directory import Account, AccountDirectory, Accounts, StaticAccounts
from worker.base.settings import Settings, SettingsError

__all__ = [
    "Account",
    "AccountDirectory",
    "Accounts",
    "AccountsConfig",
    "StaticAccounts",
    "accounts_config",
    "base_limits",
]


def base_limits(settings: Settings) -> Limits:
    """The limits the environment gives (``TAGSYNC_RATE``...); a file's ``[defaults]`` and
    each account may override them."""
    return Limits(settings.rate, settings.burst, settings.daily_budget, settings.token_mode)


def accounts_config(settings: Settings, env: Mapping[str, str] | None = None) -> AccountsConfig:
    """The accounts file named by ``TAGSYNC_ACCOUNTS``, or the one account of
    ``WECHAT_APPID``/``WECHAT_SECRET``; ``SettingsError`` says what is wrong."""
    if settings.accounts_file:
        try:
            return load_accounts_file(
                settings.accounts_file,
                os.environ if env is None else env,
                base=base_limits(settings),
            )
        except AccountsFileError as exc:
            raise SettingsError(str(exc)) from None
    appid, secret = settings.require_wechat()
    push = None
    if settings.push_token is not None:
        push = PushKeys(settings.push_token, settings.push_aes_key)
    return AccountsConfig((AccountConfig(appid, secret, base_limits(settings), push),))
