"""The worker's Redis connections: every command is retried in place until Redis answers.

A worker must never let dramatiq ack a message whose effect did not commit. If a Redis
error escaped an actor, dramatiq's Retries middleware would schedule the retry with a
Redis write, which fails too while Redis is down, and the message would then be acked
and lost. So the worker's clients (its own and its broker's) retry every command on
connection errors, timeouts and "loading" answers, with a backoff capped at 1 s, for as
long as Redis is away: a crash and restart, a failover or a stall only pauses the work.

Commands may then run twice (the first answer lost with the connection): the scripts are
idempotent or harmless to repeat (a merge, an ack, a dead letter written once per intent);
a fetch whose answer was lost leaves messages in this worker's unacked set, which
``worker.runtime.recovery`` hands back when Redis returns.

Producers and the CLI keep plain clients: there a call should fail fast and say so.
"""

from __future__ import annotations

import time
from typing import Any

import redis
from redis.backoff import ExponentialBackoff
from redis.cluster import RedisCluster
from redis.exceptions import (
    BusyLoadingError,
    ClusterDownError,
    ClusterError,
    ConnectionError,
    MasterDownError,
    TimeoutError,
    TryAgainError,
)
from redis.retry import Retry

from producers.redis_url import cluster_client, connect, is_cluster

#: The longest pause between two tries of a command while Redis is away, s: commands
#: resume within about a second of Redis answering again.
MAX_RETRY_WAIT_S = 1.0
#: The first pause between two tries, s (doubling up to the longest).
FIRST_RETRY_WAIT_S = 0.05
#: How long one command may wait for Redis's answer before it is tried again, s.
SOCKET_TIMEOUT_S = 10.0
#: How long a connection attempt may take, s.
CONNECT_TIMEOUT_S = 2.0


#: Errors of a cluster that pass: a node away, a failover under way, a slot migrating
#: (ClusterError: redis-py followed 16 redirections of a half-moved slot and gave up).
CLUSTER_AWAY = (
    ConnectionError, TimeoutError, BusyLoadingError, ClusterDownError, MasterDownError,
    TryAgainError, ClusterError,
)  # fmt: skip
#: Tries of one pipeline on a cluster (each with the backoff): about a minute.
CLUSTER_PIPELINE_TRIES = 64


class RetryingCluster(RedisCluster):
    """A cluster client whose commands (scripts included) are tried until the cluster
    answers: redis-py's own retries end when no node answers a topology refresh."""

    def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        wait = FIRST_RETRY_WAIT_S
        while True:
            try:
                return super().execute_command(*args, **kwargs)  # type: ignore[no-untyped-call]
            except CLUSTER_AWAY:
                time.sleep(wait)
                wait = min(wait * 2, MAX_RETRY_WAIT_S)


def retrying_client(url: str) -> redis.Redis:
    """A client whose commands are retried until Redis answers (the worker's own)."""
    if is_cluster(url):
        # Pipelines are retried by redis-py (CLUSTER_PIPELINE_TRIES); single commands and
        # scripts, which carry every state change, for as long as it takes.
        return cluster_client(
            url,
            {
                "retry": Retry(
                    ExponentialBackoff(cap=MAX_RETRY_WAIT_S, base=FIRST_RETRY_WAIT_S),
                    CLUSTER_PIPELINE_TRIES,
                ),
                "socket_timeout": SOCKET_TIMEOUT_S,
                "socket_connect_timeout": CONNECT_TIMEOUT_S,
                "health_check_interval": 30,
            },
            RetryingCluster,
        )
    return connect(
        url,
        retry=Retry(ExponentialBackoff(cap=MAX_RETRY_WAIT_S, base=FIRST_RETRY_WAIT_S), -1),
        retry_on_error=[ConnectionError, TimeoutError, BusyLoadingError],
        socket_timeout=SOCKET_TIMEOUT_S,
        socket_connect_timeout=CONNECT_TIMEOUT_S,
        health_check_interval=30,
    )
