"""Connect to the Redis that ``TAGSYNC_REDIS_URL`` names: plain, TLS, or behind Sentinel.

Forms (every tagsync process and producer reads the same variable):

- ``redis://[[user]:password@]host:port/db``: plain TCP;
- ``rediss://...``: the same over TLS; redis-py's query options apply
  (``?ssl_ca_certs=/path/ca.pem``, ``ssl_cert_reqs=none`` for a self-signed test server);
- ``redis+sentinel://[[user]:password@]host:port[,host:port...]/MASTER[/db]``: ask the
  listed Sentinels which server is MASTER's primary, and again after every lost connection,
  so a failover needs no restart. The password is the primary's; ``?sentinel_password=``
  is the Sentinels' own when they have one. ``rediss+sentinel://`` talks TLS to both.
- ``redis+cluster://[[user]:password@]host:port[,host:port...]``: a Redis Cluster, found
  from any of the listed nodes (redis-py's cluster client follows slots as they move and
  replicas as they are promoted). For tagsync's state only (``TAGSYNC_REDIS_URL``): the
  dramatiq queue is not slot-aware and needs ``TAGSYNC_QUEUE_URL``, a plain or Sentinel
  Redis. ``rediss+cluster://`` talks TLS.

The URL holds the password, so it is never printed as is: ``redacted`` gives the printable form.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast
from urllib.parse import parse_qs, unquote, urlsplit, urlunsplit

import redis
from redis.cluster import ClusterNode, RedisCluster
from redis.connection import SSLConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.sentinel import Sentinel, SentinelManagedConnection

SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
SCHEMES = ("redis", "rediss", "unix", *SENTINEL_SCHEMES, *CLUSTER_SCHEMES)
DEFAULT_SENTINEL_PORT = 26379
DEFAULT_PORT = 6379


class _PrimaryFollowingConnection(SentinelManagedConnection):
    """A Sentinel-managed connection that asks the Sentinels for the primary before every
    connection attempt, not only when taken from the pool.

    redis-py reconnects a lost connection to the address it had, and retries a failed
    connection attempt there too (endlessly, with the worker's retry): a command retried
    after the primary died, or its host vanished, would knock on the dead address and never
    reach the promoted replica (tests/test_redis_ha.py).
    """

    def _connect(self) -> Any:
        if self.connection_pool.is_master:
            self.host, self.port = self.connection_pool.get_master_address()
        return super()._connect()  # type: ignore[no-untyped-call]

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        # A demoted primary answers a script's write with READONLY wrapped in a script error
        # (redis-py turns only a bare READONLY into a reconnect): the same news, so the same
        # answer, a reconnect to the primary the Sentinels name, and the command retried
        # there (tagsync's scripts are safe to run again; this one wrote nothing).
        try:
            return super().read_response(*args, **kwargs)
        except ResponseError as exc:
            if self.connection_pool.is_master and "READONLY" in str(exc):
                self.disconnect()  # type: ignore[no-untyped-call]
                raise RedisConnectionError("the primary is now a replica (READONLY)") from exc
            raise


class _PrimaryFollowingSSLConnection(_PrimaryFollowingConnection, SSLConnection):
    """The same over TLS (``rediss+sentinel://``)."""


class RedisUrlError(ValueError):
    """``TAGSYNC_REDIS_URL`` is not one of the forms above; the message says which part."""


def check_scheme(url: str, name: str = "TAGSYNC_REDIS_URL") -> str:
    """``url``'s scheme, or ``RedisUrlError`` when it is none of the forms above."""
    scheme = urlsplit(url).scheme
    if scheme not in SCHEMES:
        raise RedisUrlError(
            f"{name} {redacted(url)!r}: the scheme must be one of {', '.join(SCHEMES)}"
        )
    return scheme


def is_cluster(url: str) -> bool:
    """Does ``url`` name a Redis Cluster?"""
    return urlsplit(url).scheme in CLUSTER_SCHEMES


def is_cluster_client(client: object) -> bool:
    """Is ``client`` (typed as ``redis.Redis`` throughout) a cluster client?"""
    return isinstance(client, RedisCluster)


def queue_url(env: Mapping[str, str]) -> str | None:
    """The dramatiq queue's Redis: ``TAGSYNC_QUEUE_URL``, else ``TAGSYNC_REDIS_URL``;
    ``RedisUrlError`` when that is a cluster (dramatiq's Redis broker keeps a queue in
    several keys its scripts touch together, with no hash tag: they would span slots)."""
    own = env.get("TAGSYNC_QUEUE_URL", "").strip()
    url = own or env.get("TAGSYNC_REDIS_URL", "").strip()
    if not url:
        return None
    name = "TAGSYNC_QUEUE_URL" if own else "TAGSYNC_REDIS_URL"
    check_scheme(url, name)
    if is_cluster(url):
        raise RedisUrlError(
            f"{name} {redacted(url)!r} is a Redis Cluster, which dramatiq's queue cannot use: "
            "set TAGSYNC_QUEUE_URL to a plain or Sentinel Redis (the state stays on the cluster)"
        )
    return url


def connect(url: str, **kwargs: Any) -> redis.Redis:
    """A client for ``url``; ``kwargs`` (timeouts, retry) apply to the server connections."""
    scheme = check_scheme(url)
    if scheme in SENTINEL_SCHEMES:
        return _sentinel_client(url, kwargs)
    if scheme in CLUSTER_SCHEMES:
        return cluster_client(url, kwargs)
    return redis.Redis.from_url(url, **kwargs)


def cluster_client(
    url: str, kwargs: dict[str, Any], cls: type[RedisCluster] = RedisCluster
) -> redis.Redis:
    """A cluster client (``cls``) for a ``redis+cluster://`` URL."""
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    if not netloc or parts.path.strip("/"):
        raise RedisUrlError(
            f"TAGSYNC_REDIS_URL {redacted(url)!r}: a cluster URL is "
            "redis+cluster://[:password@]host:port[,host:port...] (a cluster has no db)"
        )
    nodes = [
        ClusterNode(*_host_port(url, item, DEFAULT_PORT))  # type: ignore[no-untyped-call]
        for item in netloc.split(",")
    ]
    query = {key: values[-1] for key, values in parse_qs(parts.query).items()}
    tls: dict[str, Any] = {}
    if parts.scheme == "rediss+cluster":
        tls = {"ssl": True, **{k: v for k, v in query.items() if k.startswith("ssl_")}}
    # retry_on_error is the plain client's; the cluster client retries by its own rules.
    kwargs = {k: v for k, v in kwargs.items() if k != "retry_on_error"}
    client = cls(
        startup_nodes=nodes,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        **tls,
        **kwargs,
    )
    # The same commands, scripts and pipelines as a plain client for tagsync's keys (each
    # script's keys share one slot; cross-slot reads scatter over the primaries).
    return cast(redis.Redis, client)


def _sentinel_client(url: str, kwargs: dict[str, Any]) -> redis.Redis:
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    path = [p for p in parts.path.split("/") if p]
    if not netloc or not path or len(path) > 2:
        raise RedisUrlError(
            f"TAGSYNC_REDIS_URL {redacted(url)!r}: a Sentinel URL is "
            "redis+sentinel://[:password@]host:port[,host:port...]/MASTER[/db]"
        )
    sentinels = [_host_port(url, item) for item in netloc.split(",")]
    try:
        db = int(path[1]) if len(path) == 2 else 0
    except ValueError:
        raise RedisUrlError(
            f"TAGSYNC_REDIS_URL {redacted(url)!r}: the db must be a number"
        ) from None
    query = {key: values[-1] for key, values in parse_qs(parts.query).items()}
    tls: dict[str, Any] = {}
    if parts.scheme == "rediss+sentinel":  # ssl_ca_certs=..., ssl_cert_reqs=... as redis-py's
        tls = {"ssl": True, **{k: v for k, v in query.items() if k.startswith("ssl_")}}
    credentials: dict[str, Any] = {
        "username": unquote(parts.username) if parts.username else None,
        "password": unquote(parts.password) if parts.password else None,
    }
    sentinel_kwargs: dict[str, Any] = {
        key: kwargs[key] for key in ("socket_timeout", "socket_connect_timeout") if key in kwargs
    }
    if "sentinel_password" in query:
        sentinel_kwargs["password"] = query["sentinel_password"]
    sentinel = Sentinel(sentinels, sentinel_kwargs={**sentinel_kwargs, **tls}, **tls)
    client: redis.Redis = sentinel.master_for(
        unquote(path[0]),
        db=db,
        connection_class=(_PrimaryFollowingSSLConnection if tls else _PrimaryFollowingConnection),
        **credentials,
        **tls,
        **kwargs,
    )
    return client


def _host_port(url: str, item: str, default: int = DEFAULT_SENTINEL_PORT) -> tuple[str, int]:
    host, _, port = item.rpartition(":") if ":" in item else (item, "", "")
    try:
        return host.strip("[]"), int(port) if port else default
    except ValueError:
        raise RedisUrlError(f"TAGSYNC_REDIS_URL {redacted(url)!r}: bad node {item!r}") from None


def redacted(url: str) -> str:
    """``url`` with its password (and any ``*password=`` query value) shown as ``***``."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hosts = netloc.rpartition("@")
        user = userinfo.partition(":")[0]
        netloc = f"{user}:***@{hosts}" if ":" in userinfo else f"***@{hosts}"
    query = "&".join(
        f"{key}=***" if "password" in key.lower() else f"{key}={value}"
        for key, _, value in (pair.partition("=") for pair in parts.query.split("&") if pair)
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
