"""The Procfile, run by honcho against the simulator, as a developer would."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from fakewechat import DEFAULT_APPID, DEFAULT_SECRET
from tests.helpers import Sim
from worker.runtime.processes import free_port

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def test_procfile_runs_the_whole_stack(tmp_path: Path) -> None:
    """`honcho start` runs Redis, the simulator, the worker and gunicorn on the platform's
    $PORT on every address; intents flow, and in JSON mode every line of the worker and the
    ingest (banners, dramatiq's and gunicorn's own) is a JSON object."""
    # Given: the development env file with free ports, logs as JSON
    ports = {
        name: free_port() for name in ("REDIS_PORT", "FAKEWECHAT_PORT", "TAGSYNC_METRICS_PORT")
    }
    ingest_port = free_port()
    env_file = tmp_path / "test.env"
    lines = [
        line
        for line in (ROOT / "dev.env").read_text().splitlines()
        if line
        and not line.startswith("#")
        and line.split("=")[0] not in {*ports, "TAGSYNC_LOG_FORMAT"}
    ]
    lines = [
        line.replace("6379", str(ports["REDIS_PORT"])).replace(
            "8089", str(ports["FAKEWECHAT_PORT"])
        )
        for line in lines
    ]
    lines += [f"{name}={port}" for name, port in ports.items()]
    lines.append("TAGSYNC_LOG_FORMAT=json")
    lines.append(f"REDIS_DIR={tmp_path / 'redis'}")  # not the developer's .tagsync/dev/
    env_file.write_text("\n".join(lines) + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TAGSYNC_", "WECHAT_"))}
    bin_dir = Path(sys.executable).parent  # the Procfile's commands live beside this python
    # honcho gives the n-th process of the Procfile PORT = base + 100 n; ingest is the second.
    honcho = subprocess.Popen(
        [
            str(bin_dir / "honcho"),
            "-e",
            str(env_file),
            "-f",
            str(ROOT / "Procfile"),
            "start",
            "-p",
            str(ingest_port - 100),
        ],
        cwd=ROOT,
        env={**env, "PATH": f"{bin_dir}:{env.get('PATH', '')}"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    ingest = f"http://127.0.0.1:{ingest_port}"
    sim = Sim(f"http://127.0.0.1:{ports['FAKEWECHAT_PORT']}")
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if requests.get(f"{ingest}/healthz", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert honcho.poll() is None and time.monotonic() < deadline, (
                "the stack did not come up"
            )
            time.sleep(0.5)
        # Bound to every address, not loopback only: reachable at this host's own address.
        address = host_address()
        if address is not None:
            assert requests.get(f"http://{address}:{ingest_port}/healthz", timeout=5).ok
        # When: a tag is created and intents arrive over HTTP
        body = {"grant_type": "client_credential", "appid": DEFAULT_APPID, "secret": DEFAULT_SECRET}
        access = sim.http.post(f"{sim.url}/cgi-bin/stable_token", json=body, timeout=5).json()[
            "access_token"
        ]
        tag = sim.api("tags/create", {"tag": {"name": "procfile"}}, token=access)["tag"]["id"]
        fans = sim.fans(70)
        intents = [{"op": "tag", "tag_id": tag, "openid": openid} for openid in fans]
        response = requests.post(
            f"{ingest}/v1/intents",
            json={"intents": intents},
            headers={"Authorization": "Bearer dev-ingest-token"},
            timeout=10,
        )
        assert response.status_code == 202
        # Then
        deadline = time.monotonic() + 30
        while set(sim.state()["tags"][str(tag)]["fans"]) != set(fans):
            assert time.monotonic() < deadline, "intents were not applied"
            time.sleep(0.3)
        assert requests.get(
            f"http://127.0.0.1:{ports['TAGSYNC_METRICS_PORT']}/metrics", timeout=5
        ).ok
    finally:
        os.killpg(honcho.pid, signal.SIGTERM)
        try:
            output, _ = honcho.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(honcho.pid, signal.SIGKILL)
            output, _ = honcho.communicate()
    assert DEFAULT_SECRET not in output
    # honcho prefixes "HH:MM:SS name.1 | "; its own "system" lines are honcho's, not ours.
    ours: dict[str, list[str]] = {"worker.1": [], "ingest.1": []}
    for line in output.splitlines():
        prefix, _, text = line.partition(" | ")
        name = prefix.split()[-1] if prefix.split() else ""
        if name in ours:
            ours[name].append(text)
    assert ours["worker.1"] and ours["ingest.1"], output[-2000:]
    events = {name: [json.loads(text) for text in texts] for name, texts in ours.items()}
    assert any(e["event"] == "worker.starting" for e in events["worker.1"])
    assert any(e.get("logger", "").startswith("dramatiq") for e in events["worker.1"])
    assert any(e.get("logger") == "gunicorn.error" for e in events["ingest.1"])


def host_address() -> str | None:
    """An address of this host other than loopback, if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("10.255.255.255", 1))  # no packet is sent: only picks a route
        except OSError:
            return None
        address = probe.getsockname()[0]
    return None if address.startswith("127.") else str(address)
