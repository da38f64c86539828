"""Alerts as code: the metrics the alerts need, exported by a real worker."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import redis
import requests
from prometheus_client.parser import text_string_to_metric_families

import producers
from tests.conftest import APPID, SECRET, Sim, wait_until
from worker.wechat import WeChatClient

# -- the metrics the alerts need, from a real worker ----------------------------------------


def scrape(port: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """The worker's endpoint: each sample name's (labels, value) pairs; {} until it answers."""
    try:
        text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    except requests.ConnectionError:
        return {}  # the endpoint's process starts just after the workers
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return samples


def value(samples: dict[str, Any], name: str, **labels: str) -> float | None:
    """The value of the sample ``name`` whose labels include ``labels``, or None."""
    for found, number in samples.get(name, []):
        if labels.items() <= found.items():
            return float(number)
    return None


def test_a_worker_exports_each_account_rate_and_token_refreshes(
    sim: Sim, start_worker: Any, queue: redis.Redis, client: WeChatClient, tmp_path: Path
) -> None:
    """The configured rate of every served account, and token fetches per account."""
    # Given: an accounts file of two accounts with their own rates
    other = "wxalerts000000other"
    accounts = tmp_path / "accounts.toml"
    accounts.write_text(
        f'[[accounts]]\nappid = "{APPID}"\nsecret = "env:ALERTS_SECRET"\nrate = 7\n\n'
        f'[[accounts]]\nappid = "{other}"\nsecret = "env:ALERTS_SECRET"\nrate = 3\n'
    )
    tag_id = client.create_tag("alerts").id
    queue.delete(f"tagsync:{{{APPID}}}:token")  # the workers fetch their own
    worker = start_worker(TAGSYNC_ACCOUNTS=str(accounts), ALERTS_SECRET=SECRET)
    port = worker.env["TAGSYNC_METRICS_PORT"]

    # When: an intent is applied
    producers.tag(tag_id, sim.fans(1), account=APPID)
    wait_until(
        lambda: value(scrape(port), "tagsync_intents_applied_total", account=APPID),
        what="an applied intent",
    )

    # Then: each account's rate, and the token fetch counted for its account
    samples = scrape(port)
    assert value(samples, "tagsync_account_rate_limit", account=APPID) == 7
    assert value(samples, "tagsync_account_rate_limit", account=other) == 3
    fetched = value(samples, "tagsync_token_refreshes_total", account=APPID)
    assert fetched is not None and fetched >= 1
    assert value(samples, "tagsync_token_refresh_failures_total") is None
    running = {"reason": "", "api": "all", "errcode": ""}
    assert value(samples, "tagsync_account_paused", account=APPID, **running) == 0


def test_a_worker_exports_token_failures_and_the_errcode_of_a_pause(
    sim: Sim, start_worker: Any, queue: redis.Redis, client: WeChatClient
) -> None:
    """A refused secret: the failed fetch counted with account and errcode, the pause gauge
    with reason and errcode; the secret in no label."""
    # Given: a worker with a wrong secret and no token cached
    tag_id = client.create_tag("alerts").id
    queue.delete(f"tagsync:{{{APPID}}}:token")
    wrong = "wrong-" + SECRET
    worker = start_worker(WECHAT_SECRET=wrong)
    port = worker.env["TAGSYNC_METRICS_PORT"]

    # When: an intent needs a call
    producers.tag(tag_id, sim.fans(1), account=APPID)

    # Then: the fetch's failure (stable_token refuses the secret: 40125) and the pause
    def paused() -> bool:
        samples = scrape(port)
        return bool(
            value(samples, "tagsync_token_refresh_failures_total", account=APPID, errcode="40125")
            and value(
                samples,
                "tagsync_account_paused",
                account=APPID,
                reason="credentials",
                api="all",
                errcode="40125",
            )
        )

    wait_until(paused, what="a counted failure and a credentials pause with its errcode")
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    assert SECRET not in text and wrong not in text
