"""The Procfile, run by honcho against the simulator, as a developer would."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from fakewechat import DEFAULT_APPID, DEFAULT_SECRET
from tests.conftest import Sim
from worker.runtime.redis_server import free_port

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def test_procfile_runs_the_whole_stack(tmp_path: Path) -> None:
    """`honcho start` runs Redis, the simulator, the worker and gunicorn; intents flow."""
    # Given: the development env file with free ports
    ports = {
        name: free_port()
        for name in ("REDIS_PORT", "FAKEWECHAT_PORT", "INGEST_PORT", "TAGSYNC_METRICS_PORT")
    }
    env_file = tmp_path / "test.env"
    lines = [
        line
        for line in (ROOT / "dev.env").read_text().splitlines()
        if line and not line.startswith("#") and line.split("=")[0] not in ports
    ]
    lines = [
        line.replace("6379", str(ports["REDIS_PORT"])).replace(
            "8089", str(ports["FAKEWECHAT_PORT"])
        )
        for line in lines
    ]
    lines += [f"{name}={port}" for name, port in ports.items()]
    env_file.write_text("\n".join(lines) + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TAGSYNC_", "WECHAT_"))}
    bin_dir = Path(sys.executable).parent  # the Procfile's commands live beside this python
    honcho = subprocess.Popen(
        [str(bin_dir / "honcho"), "-e", str(env_file), "-f", str(ROOT / "Procfile"), "start"],
        cwd=ROOT,
        env={**env, "PATH": f"{bin_dir}:{env.get('PATH', '')}"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    ingest = f"http://127.0.0.1:{ports['INGEST_PORT']}"
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
    assert "worker.1" in output and "ingest.1" in output
    assert DEFAULT_SECRET not in output
