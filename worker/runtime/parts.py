"""Each worker process's long-lived parts, built once on first use (after dramatiq forks)."""

from __future__ import annotations

import threading
from dataclasses import dataclass

from redis import Redis

from worker.accounts import Accounts, accounts_config
from worker.base.settings import Settings
from worker.dead_letters import DeadLetters
from worker.pending import PendingStore
from worker.runtime.redis_client import retrying_client
from worker.tag_names import TagNames


@dataclass
class Runtime:
    """Settings, Redis, the pending store, the dead letters, the served accounts and the
    tag name cache."""

    settings: Settings
    redis: Redis
    #: The queue's Redis: ``redis`` itself unless ``TAGSYNC_QUEUE_URL`` names another.
    queue: Redis
    store: PendingStore
    dead_letters: DeadLetters
    accounts: Accounts
    names: TagNames

    @classmethod
    def from_settings(cls, settings: Settings) -> Runtime:
        """Build every part from the settings (Redis and the accounts are required)."""
        config = accounts_config(settings)
        # Retried until Redis answers: an actor never fails (and is acked) on a Redis outage.
        connection = retrying_client(settings.require_redis_url())
        queue_url = settings.require_queue_url()
        apart = queue_url != settings.redis_url
        return cls(
            settings=settings,
            redis=connection,
            queue=retrying_client(queue_url) if apart else connection,
            store=PendingStore(
                connection,
                linger_ms=settings.linger_ms,
                ordering_window_s=settings.ordering_window_s,
                history_s=settings.history_s,
                # One Redis: its replication stream keeps each merge ahead of its message's
                # ack. Two: ingest itself waits for the state's replicas.
                wait_replicas=settings.wait_replicas if apart else 0,
                wait_ms=settings.wait_ms,
            ),
            dead_letters=DeadLetters(connection, max_len=settings.dlq_max_len),
            accounts=Accounts(
                config,
                redis=connection,
                api_base=settings.api_base,
                read_timeout=settings.wechat_timeout_s,
                # An account added to (or removed from) the file is served within seconds.
                reload_file=lambda: accounts_config(settings),
            ),
            names=TagNames(connection),
        )


_lock = threading.Lock()
_runtime: Runtime | None = None


def runtime() -> Runtime:
    """This process's runtime, built from the environment on first use."""
    global _runtime
    with _lock:
        if _runtime is None:
            _runtime = Runtime.from_settings(Settings.from_env())
        return _runtime
