"""What ``tagsync status`` (and the demo's progress line) reports, read from Redis: each
account's pauses, limits in use, budget and token; each tag's backlog; the worker
processes' heartbeats; totals. A JSON-ready dict, rendered by ``worker.cli.status_view``."""

from __future__ import annotations

import time
from typing import Any

import redis

from worker.accounts import Account, Accounts, controls
from worker.admin.gated_client import ADMIN_APIS
from worker.base.settings import Settings
from worker.dead_letters import DeadLetters
from worker.gate import BATCH_API, AccountGate
from worker.pending import PendingStore
from worker.queues import queued_intents
from worker.runtime.lifecycle import heartbeats, redis_now
from worker.wechat.tokens import RedisTokenStore


def account_status(
    connection: redis.Redis, account: Account | str, settings: Settings
) -> dict[str, Any]:
    """An account's pause, budget, rate and token, as a JSON-ready dict."""
    if isinstance(account, Account):
        appid, gate = account.appid, account.gate
    else:  # an account with intents that this deployment does not serve (any more)
        appid = account
        gate = AccountGate(connection, rate=settings.rate)
    account = appid
    pauses = {
        scope: {
            "reason": pause.reason,
            "errcode": pause.errcode,
            "until": pause.until,
            "message": pause.message,
        }
        for scope, pause in gate.pauses(account, (*BATCH_API.values(), *ADMIN_APIS)).items()
    }
    token_ms = RedisTokenStore(connection, account).ttl_ms()
    # The limits the workers used on their last call; before any, what the settings say.
    in_use = gate.limits_in_use(account)
    rate, burst, budget = in_use or (gate.rate, gate.burst, gate.daily_budget or None)
    limits = controls.limits_set(connection, account)
    return {
        # The whole account's pause; `pauses` also holds each paused API (45009 is per API).
        "paused": pauses.get("account"),
        "pauses": pauses,
        "rate": {
            "limit_per_s": rate,
            "burst": burst,
            "source": "workers" if in_use else "settings",
            # How far ahead call slots are already reserved: near 0 idle, growing under load.
            "reserved_ahead_ms": gate.reserved_ahead_ms(account),
        },
        "budget": {"limit": budget, "used_today": gate.budget_used(account)},
        # `tagsync limits set`: over the accounts file's, who set them and when
        "limits_set": None if limits is None else dict(limits.__dict__),
        "token": {
            "cached": token_ms > 0,
            "expires_in_s": round(token_ms / 1000) if token_ms > 0 else None,
        },
    }


def collect_status(
    connection: redis.Redis,
    settings: Settings | None = None,
    *,
    directory: Accounts | None = None,
    only: str | None = None,
    queue: redis.Redis | None = None,
) -> dict[str, Any]:
    """Everything ``tagsync status`` shows, as a JSON-ready dict (``only``: one account;
    ``queue``: the queue's Redis when it is another)."""
    settings = settings or Settings()
    store = PendingStore(connection)
    now = time.time()
    held = store.paused_tags(only)
    tags: list[dict[str, Any]] = []
    for tag in store.status():
        if only is not None and tag.account != only:
            continue
        tags.append(
            {
                "account": tag.account,
                "tag_id": tag.tag_id,
                "pending": {"tag": tag.pending_tag, "untag": tag.pending_untag},
                "in_flight": tag.inflight + tag.splitting,
                "splitting": tag.splitting,
                "oldest_pending_age_s": round(now - tag.oldest_ts, 3) if tag.oldest_ts else None,
                "flushing": tag.leased,
                "scheduled": tag.scheduled,
                # an operator's pause of the tag (`tagsync pause --tag`): by, reason, at
                "paused": held.get((tag.account, tag.tag_id)),
            }
        )
    ages = [t["oldest_pending_age_s"] for t in tags if t["oldest_pending_age_s"] is not None]
    served = directory.appids() if directory is not None else frozenset()
    accounts = {t["account"] for t in tags} | set(served)
    if settings.appid and directory is None:
        accounts.add(settings.appid)
    if only is not None:
        accounts = {only}

    def parts(appid: str) -> Account | str:
        found = directory.get(appid) if directory is not None and appid in served else None
        return found or appid

    return {
        "accounts": {
            appid: account_status(connection, parts(appid), settings) for appid in sorted(accounts)
        },
        "tags": tags,
        "workers": workers_report(connection),
        "totals": {
            "pending": sum(t["pending"]["tag"] + t["pending"]["untag"] for t in tags),
            "in_flight": sum(t["in_flight"] for t in tags),
            "oldest_pending_age_s": max(ages) if ages else None,
            "queued_messages": queued_intents(queue or connection),
            "dead_letters": DeadLetters(connection).count(),
        },
    }


def workers_report(connection: redis.Redis) -> list[dict[str, Any]]:
    """The worker processes' heartbeats, each with ``alive`` and ages on Redis's clock."""
    now = redis_now(connection)
    return [
        {
            "name": beat.name,
            "host": beat.host,
            "pid": beat.pid,
            "started_at": beat.started_at,
            "threads": beat.threads,
            "messages": beat.messages,
            "alive": beat.alive(now),
            "beat_age_s": round(now - beat.beat_at, 1),
            "last_message_age_s": (
                None if beat.last_message_at is None else round(now - beat.last_message_at, 1)
            ),
        }
        for beat in heartbeats(connection)
    ]
