"""``tagsync dev``: the local stack of the Procfile, with ``dev.env``, in one command.

Runs every line of the Procfile (Redis, the simulator, the worker, the ingest) with the
settings of the env file, waits until each one answers, creates the tags the README's curl
examples use, prints them and ``ready``. Ctrl-C stops the processes in reverse order and
gives the worker the time it needs to finish its WeChat call in flight (honcho would kill it
after 5 s). The dev Redis keeps its data in ``.tagsync/dev/`` (AOF), across restarts.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import IO, Any

import redis
import requests

from producers.redis_url import connect
from worker.base.settings import Settings, SettingsError
from worker.runtime.launch import stop_timeout_s
from worker.runtime.lifecycle import heartbeats, redis_now
from worker.runtime.processes import die_with_parent

#: The tags the README's examples use; created at start when missing.
DEV_TAGS = ("VIP", "newsletter")
#: Procfile processes the others depend on, started first and stopped last.
STARTS_FIRST = ("redis", "fakewechat")
#: How long each process gets to answer before the stack gives up, s.
READY_TIMEOUT_S = 60.0
#: How long a process other than the worker gets to stop before SIGKILL, s.
STOP_OTHERS_S = 10.0

_PROCFILE_LINE = re.compile(r"^([A-Za-z0-9_-]+):\s*(.+)$")
_ENV_LINE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$")


def register(commands: Any) -> None:
    """Add ``dev`` to the ``tagsync`` command line."""
    dev = commands.add_parser(
        "dev",
        help="run the local development stack of the Procfile with dev.env (make dev)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    dev.add_argument(
        "--procfile", default="Procfile", help="the Procfile to run (default %(default)s)"
    )
    dev.add_argument(
        "--env-file",
        default="dev.env",
        metavar="FILE",
        help="settings of the stack; they win over the shell's (default %(default)s)",
    )
    dev.set_defaults(run=run)


def _entries(path: Path, pattern: re.Pattern[str], shape: str) -> Iterator[re.Match[str]]:
    """Each line of ``path`` but blanks and comments, matched by ``pattern``."""
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = pattern.match(line)
        if match is None:
            raise SettingsError(f"{path}:{number}: not a {shape} line")
        yield match


def read_procfile(path: Path) -> dict[str, str]:
    """The Procfile's processes, name -> command, in file order."""
    return {match[1]: match[2] for match in _entries(path, _PROCFILE_LINE, "'name: command'")}


def read_env_file(path: Path) -> dict[str, str]:
    """``NAME=value`` lines (comments and blank lines skipped; quotes around a value removed)."""
    values: dict[str, str] = {}
    for match in _entries(path, _ENV_LINE, "NAME=value"):
        value = match[2].strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[match[1]] = value
    return values


class Stack:
    """The Procfile's processes, each in its own session, its output prefixed with its name."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self._width = 10

    def start(self, name: str, command: str) -> None:
        """Start ``command`` through the shell (the Procfile's ``${VAR:-default}``)."""
        process = subprocess.Popen(
            ["/bin/sh", "-c", f"exec {command}"],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches the stack once; it stops them in order
            preexec_fn=die_with_parent,
        )
        self.processes[name] = process
        assert process.stdout is not None
        threading.Thread(target=self._relay, args=(name, process.stdout), daemon=True).start()

    def _relay(self, name: str, output: IO[bytes]) -> None:
        for raw in iter(output.readline, b""):
            line = raw.decode(errors="replace").rstrip()
            print(f"{name:<{self._width}}| {line}", flush=True)

    def failed(self) -> str | None:
        """The name of a process that exited, if any."""
        return next((n for n, p in self.processes.items() if p.poll() is not None), None)

    def stop(self, worker_stop_s: float) -> None:
        """SIGTERM each process, the last started first; SIGKILL what outlives its wait."""
        for name in reversed(self.processes):
            process = self.processes[name]
            if process.poll() is not None:
                continue
            wait_s = worker_stop_s if name == "worker" else STOP_OTHERS_S
            print(f"{'dev':<{self._width}}| stopping {name} (up to {wait_s:g} s)", flush=True)
            try:
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(timeout=wait_s)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            except ProcessLookupError:
                pass


def _wait_for(what: str, ready: Callable[[], bool], stack: Stack) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        failed = stack.failed()
        if failed is not None:
            raise SettingsError(f"{failed} exited while the stack was starting (see its lines)")
        try:
            if ready():
                return
        except (OSError, redis.RedisError, requests.RequestException):
            pass
        if time.monotonic() > deadline:
            raise SettingsError(f"{what} did not come up in {READY_TIMEOUT_S:g} s")
        time.sleep(0.2)


def _tagsync(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _create_tags(env: dict[str, str]) -> None:
    """Create the README's tags in the simulator (through ``tagsync tags``, at the rate)."""
    listed = _tagsync(env, "tags", "list", "--json")
    if listed.returncode != 0:
        raise SettingsError(f"tagsync tags list failed: {listed.stderr.strip()}")
    existing = {tag["name"] for tag in json.loads(listed.stdout)}
    for name in DEV_TAGS:
        if name in existing:
            continue
        created = _tagsync(env, "tags", "create", name)
        if created.returncode != 0:
            raise SettingsError(f"tagsync tags create {name} failed: {created.stderr.strip()}")


def run(args: argparse.Namespace) -> int:
    """Run the stack until Ctrl-C or until one of its processes exits."""
    procfile, env_file = Path(args.procfile), Path(args.env_file)
    for path, what in ((procfile, "--procfile"), (env_file, "--env-file")):
        if not path.is_file():
            raise SettingsError(f"{what} {path}: no such file (run from the repository's top)")
    env = {**os.environ, **read_env_file(env_file)}
    # The Procfile names console scripts (tagsync, gunicorn, fakewechat): this venv's.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    settings = Settings.from_env(env)
    settings.require_ingest()
    settings.require_wechat()
    assert settings.redis_url is not None
    ingest_url = f"http://127.0.0.1:{env.get('PORT', '8080')}"
    stack = Stack(env)
    # Both stop the stack in order, also when started in the background with SIGINT ignored.
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    with ExitStack() as cleanup:
        cleanup.callback(stack.stop, stop_timeout_s(settings.wechat_timeout_s))
        connection = connect(settings.redis_url, socket_connect_timeout=1, socket_timeout=5)
        cleanup.callback(connection.close)
        processes = read_procfile(procfile)
        # What the others need starts first and, the stop going in reverse, stops last.
        order = sorted(
            processes,
            key=lambda n: (
                n not in STARTS_FIRST,
                STARTS_FIRST.index(n) if n in STARTS_FIRST else 0,
            ),
        )
        for name in order:
            command = processes[name]
            stack.start(name, command)
            if name == "redis":  # everything else needs it
                _wait_for("Redis", lambda: bool(connection.ping()), stack)
        _wait_for(
            "the simulator",
            lambda: requests.get(f"{settings.api_base}/_sim/config", timeout=1).ok,
            stack,
        )
        _wait_for("the ingest", lambda: requests.get(f"{ingest_url}/healthz", timeout=1).ok, stack)
        _wait_for(
            "the worker",
            lambda: any(b.alive(redis_now(connection)) for b in heartbeats(connection)),
            stack,
        )
        _create_tags(env)
        _announce(ingest_url, settings)
        while (failed := stack.failed()) is None:
            time.sleep(0.5)
        print(f"{'dev':<10}| {failed} exited; stopping the stack", flush=True)
        return 1


def _announce(ingest_url: str, settings: Settings) -> None:
    first_fan = _first_fan(settings.api_base)
    body = f'{{"intents":[{{"op":"tag","tag":"VIP","openid":"{first_fan}"}}]}}'
    lines = [
        f"tags {', '.join(DEV_TAGS)} exist; in another terminal, with the same settings:",
        "  set -a; . ./dev.env; set +a",
        f"  curl -s -X POST {ingest_url}/v1/intents "
        '-H "Authorization: Bearer $TAGSYNC_INGEST_TOKEN" '
        f"-H 'Content-Type: application/json' -d {shlex.quote(body)}",
        f"  .venv/bin/tagsync user-tags {first_fan}",
        "ready (Ctrl-C stops the stack)",
    ]
    for line in lines:
        print(f"{'dev':<10}| {line}", flush=True)


def _first_fan(api_base: str) -> str:
    answer = requests.get(f"{api_base}/_sim/fans", params={"limit": 1}, timeout=5).json()
    return str(answer["openids"][0])


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
