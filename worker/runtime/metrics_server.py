"""The metrics endpoint: what every worker process wrote, plus the backlog read from Redis.

Runs as a dramatiq fork (one process beside the workers) on ``TAGSYNC_METRICS_PORT``.
Backlog gauges are read from Redis at each scrape, so they are right whichever worker
did the work, and gone workers leave no stale values behind.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import redis
import structlog
from dramatiq.middleware.prometheus import Prometheus
from prometheus_client import CollectorRegistry, multiprocess, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from producers.redis_url import connect
from worker.accounts import accounts_config
from worker.accounts.authorized import AuthorizedAccounts
from worker.accounts.controls import rates_set
from worker.accounts.pushes import PUSH_COUNTS
from worker.base.lua import text
from worker.base.settings import Settings
from worker.dead_letters import DeadLetters
from worker.gate import AccountGate
from worker.pending import PendingStore
from worker.queues import FLUSH_QUEUE, INTENTS_QUEUE, queue_connection, queue_length


class BacklogCollector(Collector):
    """Pending, in flight, oldest age, dead letters, queues and pauses, read from Redis;
    each served account's configured rate, read from its settings."""

    def __init__(self, connection: redis.Redis, settings: Settings) -> None:
        self.redis = connection
        self.queue = queue_connection(settings, connection)
        self.settings = settings

    def _served(self) -> dict[str, float]:
        """The configured and authorized accounts with their rates, calls/s (a pause shows
        even with nothing pending)."""
        try:
            config = accounts_config(self.settings)
        except ValueError:
            return {}
        served = {a.appid: a.limits.rate for a in config.accounts}
        if config.component is not None:
            for appid in AuthorizedAccounts(self.redis).appids():
                # The file's [defaults], as the directory builds it; a configured one keeps its own.
                served.setdefault(appid, config.defaults.rate)
        # A rate set at run time (`tagsync limits set`) wins.
        served.update(rates_set(self.redis, list(served)))
        return served

    def collect(self) -> Iterator[Any]:
        pending = GaugeMetricFamily(
            "tagsync_pending_intents",
            "Intents waiting to be sent, per tag and op.",
            labels=["account", "tag", "op"],
        )
        inflight = GaugeMetricFamily(
            "tagsync_inflight_intents",
            "Intents in a batch being sent, per tag.",
            labels=["account", "tag"],
        )
        oldest = GaugeMetricFamily(
            "tagsync_oldest_pending_age_seconds",
            "Age (from event time) of the oldest pending intent, per tag.",
            labels=["account", "tag"],
        )
        paused = GaugeMetricFamily(
            "tagsync_account_paused",
            "1 while the account's calls (api=all) or one API's calls are paused, with the "
            "errcode that paused them ('' for the daily budget).",
            labels=["account", "reason", "api", "errcode"],
        )
        rate_limit = GaugeMetricFamily(
            "tagsync_account_rate_limit",
            "The account's configured rate (TAGSYNC_RATE or its own), calls/s; the gate "
            "admits 98% of it.",
            labels=["account"],
        )
        queued = GaugeMetricFamily(
            "tagsync_queue_messages", "Messages waiting in a dramatiq queue.", labels=["queue"]
        )
        now = time.time()
        statuses = PendingStore(self.redis).status()
        served = self._served()
        accounts = {s.account for s in statuses} | set(served)
        for status in statuses:
            tag = str(status.tag_id)
            pending.add_metric([status.account, tag, "tag"], status.pending_tag)
            pending.add_metric([status.account, tag, "untag"], status.pending_untag)
            inflight.add_metric([status.account, tag], status.inflight + status.splitting)
            oldest.add_metric(
                [status.account, tag], max(0.0, now - status.oldest_ts) if status.oldest_ts else 0.0
            )
        gate = AccountGate(self.redis, rate=self.settings.rate)
        for account in sorted(accounts):
            pauses = gate.pauses(account)
            if not pauses:
                paused.add_metric([account, "", "all", ""], 0.0)
            for scope, pause in pauses.items():
                api = "all" if scope == "account" else scope
                paused.add_metric([account, pause.reason, api, pause.errcode], 1.0)
        for account, rate in sorted(served.items()):
            rate_limit.add_metric([account], rate)
        for queue in (INTENTS_QUEUE, FLUSH_QUEUE):
            queued.add_metric([queue], float(queue_length(self.queue, queue)))
        yield from (pending, inflight, oldest, paused, rate_limit, queued)
        yield GaugeMetricFamily(
            "tagsync_dead_letters", "Dead letters kept.", value=DeadLetters(self.redis).count()
        )
        yield from self._pushes()

    def _pushes(self) -> Iterator[Any]:
        """WeChat's pushes taken by the ingest servers (counted in Redis), and how old the
        component's verify ticket is (WeChat pushes one every 10 minutes)."""
        pushes = CounterMetricFamily(
            "tagsync_pushes",
            "WeChat pushes received by the ingest, by kind (component, account) and outcome "
            "(the InfoType or event taken, or rejected_<check>).",
            labels=["kind", "outcome"],
        )
        for field, count in sorted(self.redis.hgetall(PUSH_COUNTS).items()):
            kind, _, outcome = text(field).partition(":")
            pushes.add_metric([kind, outcome], float(count))
        yield pushes
        try:
            component = accounts_config(self.settings).component
        except ValueError:
            component = None
        if component is None:
            return
        ticket = AuthorizedAccounts(self.redis).ticket()
        yield GaugeMetricFamily(
            "tagsync_component_ticket_present",
            "1 when a component_verify_ticket is stored (the component can fetch its token).",
            value=0.0 if ticket is None else 1.0,
        )
        if ticket is not None:
            yield GaugeMetricFamily(
                "tagsync_component_ticket_age_seconds",
                "Seconds since the component's verify ticket was stored.",
                value=max(0.0, time.time() - ticket[1]),
            )


def serve() -> None:
    """The dramatiq fork: serve every process's metrics and the backlog until stopped."""
    settings = Settings.from_env()
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    if settings.redis_url:
        registry.register(BacklogCollector(connect(settings.redis_url), settings))
    host = settings.metrics_host
    try:
        start_http_server(settings.metrics_port, addr=host, registry=registry)
    except OSError as exc:  # taken since the start check: one line, not a traceback
        structlog.get_logger("tagsync.metrics").error(
            "metrics.port_taken", port=settings.metrics_port, host=host, error=exc.strerror
        )
        return
    while True:
        time.sleep(3600)


class Metrics(Prometheus):
    """dramatiq's Prometheus middleware, with tagsync's endpoint in place of dramatiq's own."""

    @property
    def forks(self) -> list[Any]:
        return [serve]
