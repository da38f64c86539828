"""Scenario `simulator`: requests/s the simulator serves to concurrent keep-alive clients.

The simulator runs as its own process; client processes (not threads, so the client side
is not one GIL) each keep one connection and send a realistic mix: batch (un)tagging of 50
random fans out of 100,000, and tags-of-a-fan look-ups. The figure is the median of runs.
"""

from __future__ import annotations

import http.client
import json
import multiprocessing
import random
import statistics
import subprocess
import sys
import time
from typing import Any
from urllib.parse import urlsplit

import requests

from fakewechat import DEFAULT_APPID, DEFAULT_SECRET

#: Fans the simulator is started with for this scenario.
FANS = 100_000


def _client(
    url: str, token: str, tag_id: int, fans: list[str], seconds: float, seed: int, out: Any
) -> None:
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(
        parts.hostname or "127.0.0.1", parts.port or 80, timeout=10
    )
    rng = random.Random(seed)
    done = errors = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        roll = rng.random()
        if roll < 0.8:
            path = "tags/members/batchtagging" if roll < 0.5 else "tags/members/batchuntagging"
            body = {"tagid": tag_id, "openid_list": rng.sample(fans, 50)}
        else:
            path, body = "tags/getidlist", {"openid": rng.choice(fans)}
        connection.request(
            "POST", f"/cgi-bin/{path}?access_token={token}", json.dumps(body),
            {"Content-Type": "application/json"},
        )  # fmt: skip
        answer = json.loads(connection.getresponse().read())
        done += 1
        errors += answer.get("errcode", 0) != 0
    out.put((done, errors))


def run(*, quick: bool = False) -> dict[str, Any]:
    """Measure the simulator's requests/s; return the figures."""
    seconds, repeats, clients = (1.0, 1, 4) if quick else (3.0, 5, 4)
    process = subprocess.Popen(
        [sys.executable, "-m", "fakewechat", "--port", "0", "--fans", str(FANS)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        url = process.stdout.readline().split("listening on ")[1].split()[0]
        http_session = requests.Session()
        body = {"grant_type": "client_credential", "appid": DEFAULT_APPID, "secret": DEFAULT_SECRET}
        token = http_session.post(f"{url}/cgi-bin/stable_token", json=body, timeout=10).json()[
            "access_token"
        ]
        tag = http_session.post(
            f"{url}/cgi-bin/tags/create",
            params={"access_token": token},
            json={"tag": {"name": "bench"}},
            timeout=10,
        ).json()["tag"]["id"]
        fans = http_session.get(f"{url}/_sim/fans", params={"limit": FANS}, timeout=60).json()[
            "openids"
        ]
        ctx = multiprocessing.get_context("spawn")
        rates, errors = [], 0
        for repeat in range(repeats):
            out = ctx.Queue()
            workers = [
                ctx.Process(
                    target=_client, args=(url, token, tag, fans, seconds, repeat * 100 + i, out)
                )
                for i in range(clients)
            ]
            for worker in workers:
                worker.start()
            results = [out.get(timeout=seconds + 60) for _ in workers]
            for worker in workers:
                worker.join()
            rates.append(sum(done for done, _ in results) / seconds)
            errors += sum(failed for _, failed in results)
        return {
            "requests_per_s": round(statistics.median(rates)),
            "runs": len(rates),
            "clients": clients,
            "errors": errors,
            "target": ">= 2000",
            "met": statistics.median(rates) >= 2000,
        }
    finally:
        process.terminate()
        process.wait(timeout=10)
