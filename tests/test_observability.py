"""Metrics, logs and the Grafana dashboard, against a real worker and a real Prometheus."""

from __future__ import annotations

import io
import json
import logging
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
import structlog
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.metrics import MetricWrapperBase

import producers
import worker.observability.metrics
from tests.helpers import APPID, SECRET, Sim, wait_until
from worker.base.settings import Settings
from worker.observability.logs import configure_logging
from worker.observability.redaction import REDACTOR
from worker.runtime.metrics_server import BacklogCollector
from worker.runtime.processes import free_port
from worker.wechat import WeChatClient

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "grafana" / "dashboards" / "tagsync.json"
#: What Grafana substitutes for $__rate_interval at a 1 s scrape interval (4 x scrape, >= 15 s).
RATE_INTERVAL = "15s"


def dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def exported_metric_names(connection: redis.Redis) -> set[str]:
    """Every series name the worker's endpoint can serve: ours, the backlog's and dramatiq's."""
    names: set[str] = set()
    collectors = [
        v for v in vars(worker.observability.metrics).values() if isinstance(v, MetricWrapperBase)
    ]
    for collector in collectors:
        for family in collector.describe():
            kind = family.type
            if kind == "counter":
                names.add(family.name + "_total")
            elif kind == "histogram":
                names.update(family.name + suffix for suffix in ("_bucket", "_sum", "_count"))
            else:
                names.add(family.name)
    names.update(f.name for f in BacklogCollector(connection, Settings(appid=APPID)).collect())
    import dramatiq.middleware.prometheus as dramatiq_prometheus

    source = Path(dramatiq_prometheus.__file__).read_text()
    for name in re.findall(r'"(dramatiq_\w+)"', source):
        names.update({name, f"{name}_bucket", f"{name}_sum", f"{name}_count"})
    return names


def panel_queries() -> list[tuple[str, str]]:
    return [
        (panel["title"], target["expr"])
        for panel in dashboard()["panels"]
        for target in panel["targets"]
    ]


# -- the dashboard, statically ---------------------------------------------------------------


def test_dashboard_is_well_formed() -> None:
    """Valid JSON, unique panel ids, a title, description and unit on every panel."""
    board = dashboard()
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        assert panel["title"] and panel["description"], panel["id"]
        assert panel["fieldConfig"]["defaults"]["unit"], panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"


def test_account_variable_filters_every_per_account_query(redis_client: redis.Redis) -> None:
    """An `account` variable (all by default) lists the served accounts, and every query of
    a metric with an account label filters by it."""
    # Given
    account = {v["name"]: v for v in dashboard()["templating"]["list"]}["account"]
    per_account = {
        "tagsync_intents_received_total", "tagsync_intents_applied_total",
        "tagsync_intents_dead_lettered_total", "tagsync_batch_size_openids_sum",
        "tagsync_batch_size_openids_count", "tagsync_batch_size_openids_bucket",
        "tagsync_wechat_errcodes_total", "tagsync_pending_intents", "tagsync_inflight_intents",
        "tagsync_oldest_pending_age_seconds", "tagsync_rate_limit_deferrals_total",
        "tagsync_account_paused", "tagsync_token_refreshes_total",
    }  # fmt: skip
    # Then
    assert account["includeAll"] and account["multi"] and account["allValue"] == ".*"
    assert "tagsync_account_rate_limit" in account["query"]["query"]
    for title, expr in panel_queries():
        for name, selector in re.findall(r"\b(tagsync_\w+)(\{[^}]*\})?", expr):
            if name in per_account:
                assert 'account=~"$account"' in selector, f"{title}: {name} is not filtered"


def test_queries_name_only_exported_metrics_and_use_rate_interval(
    redis_client: redis.Redis,
) -> None:
    """Every metric a query names is one the worker exports; every range is $__rate_interval."""
    known = exported_metric_names(redis_client)
    for title, expr in panel_queries():
        for name in re.findall(r"\b((?:tagsync|dramatiq)_\w+)", expr):
            assert name in known, f"{title}: {name} is not exported"
        for window in re.findall(r"\[([^\]]+)\]", expr):
            assert window == "$__rate_interval", f"{title}: range [{window}]"


def test_every_query_parses_as_promql(tmp_path: Path) -> None:
    """Prometheus's own parser (promtool) accepts every panel's query."""
    promtool = shutil.which("promtool")
    if promtool is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is missing (Debian's prometheus package)")
        pytest.skip("promtool is not installed (apt-get install prometheus)")
    rules = [
        {
            "record": f"tagsync:panel_{i}",
            "expr": expr.replace("$__rate_interval", "1m").replace("$account", ".*"),
        }
        for i, (_, expr) in enumerate(panel_queries())
    ]
    path = tmp_path / "panels.yml"
    path.write_text(json.dumps({"groups": [{"name": "panels", "rules": rules}]}))
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_provisioning_points_at_the_dashboards() -> None:
    """The provisioning files name a Prometheus data source and a file provider."""
    datasource = (ROOT / "grafana/provisioning/datasources/prometheus.yaml").read_text()
    provider = (ROOT / "grafana/provisioning/dashboards/tagsync.yaml").read_text()
    assert "type: prometheus" in datasource
    assert "type: file" in provider and "path:" in provider


# -- against a running worker ------------------------------------------------------------------


@pytest.fixture
def prometheus_binary() -> str:
    found = shutil.which("prometheus")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("prometheus is not installed; .ci/run installs Debian's package")
        pytest.skip("prometheus is not installed (apt-get install prometheus)")
    return found


@pytest.fixture
def running(
    sim: Sim, client: WeChatClient, redis_url: str, start_worker: Any
) -> Iterator[tuple[Any, int, list[int]]]:
    """A worker with its metrics endpoint, and a steady trickle of traffic in the background."""
    producers.configure(redis_url=redis_url)
    tags = [client.create_tag(f"obs{i}").id for i in range(3)]
    fans = sim.fans(600)
    port = free_port()
    worker = start_worker(processes=2, threads=4, TAGSYNC_METRICS_PORT=str(port), TAGSYNC_RATE="40")
    stop = threading.Event()

    def traffic() -> None:
        round_ = 0
        while not stop.is_set():
            for tag in tags:
                chunk = fans[(round_ * 60) % 600 : (round_ * 60) % 600 + 60]
                (producers.tag if round_ % 2 == 0 else producers.untag)(tag, chunk, account=APPID)
            producers.tag(tags[0], [sim.foreign(1)[0]], account=APPID)  # one dead letter a round
            round_ += 1
            stop.wait(0.5)

    thread = threading.Thread(target=traffic, daemon=True)
    thread.start()
    yield worker, port, tags
    stop.set()
    thread.join()
    producers.configure(None)


def test_metrics_endpoint_serves_every_process_and_the_backlog(
    running: tuple[Any, int, list[int]],
) -> None:
    """One endpoint shows every process's metrics (dramatiq's, tagsync's) and Redis's backlog."""
    _, port, tags = running
    deadline = time.monotonic() + 30
    text = ""
    while "tagsync_intents_applied_total" not in text and time.monotonic() < deadline:
        time.sleep(0.3)
        try:
            text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        except requests.ConnectionError:
            continue  # the endpoint's process starts just after the workers
    for name in (
        "dramatiq_messages_total",
        "tagsync_intents_received_total",
        "tagsync_intents_applied_total",
        "tagsync_batch_size_openids_bucket",
        "tagsync_wechat_request_duration_seconds_bucket",
        "tagsync_pending_intents",
        "tagsync_dead_letters",
        "tagsync_account_paused",
    ):
        assert name in text, name
    assert f'tag="{tags[0]}"' in text
    # The counters an operator reads per account carry it.
    assert re.search(rf'tagsync_intents_applied_total{{account="{APPID}",op="tag"}}', text)
    assert re.search(rf'tagsync_wechat_errcodes_total{{account="{APPID}",', text)
    labels = set(re.findall(r'[{,](\w+)="', text))
    assert "openid" not in labels and labels <= {
        "account", "tag", "op", "reason", "errcode", "endpoint", "outcome", "le", "queue", "api",
        "queue_name", "actor_name", "pid",
    }, labels  # fmt: skip


def test_every_panel_query_returns_data(
    running: tuple[Any, int, list[int]], prometheus_binary: str
) -> None:
    """Debian's Prometheus scrapes the worker; each panel's query returns data."""
    _, port, _ = running
    prometheus_port = free_port()
    with tempfile.TemporaryDirectory(prefix="tagsync-prometheus-") as directory:
        config = Path(directory) / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            "scrape_configs:\n  - job_name: tagsync\n"
            f"    static_configs:\n      - targets: ['127.0.0.1:{port}']\n"
        )
        process = subprocess.Popen(
            [
                prometheus_binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={directory}/data",
                f"--web.listen-address=127.0.0.1:{prometheus_port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            api = f"http://127.0.0.1:{prometheus_port}/api/v1/query"
            # Given: at least 12 s of scrapes while traffic flows
            deadline = time.monotonic() + 30
            while True:
                try:
                    up = requests.get(api, params={"query": "up"}, timeout=5).json()["data"][
                        "result"
                    ]
                    if up and up[0]["value"][1] == "1":
                        break
                except requests.RequestException:
                    pass
                assert time.monotonic() < deadline, "Prometheus did not scrape the worker"
                time.sleep(0.5)

            # When / Then: every panel's query returns data once rates have two scrapes
            def empty_panels() -> list[str]:
                empty = []
                for title, expr in panel_queries():
                    # The account picked in the variable: the one the worker serves.
                    query = expr.replace("$__rate_interval", RATE_INTERVAL).replace(
                        "$account", APPID
                    )
                    answer = requests.get(api, params={"query": query}, timeout=10).json()
                    assert answer["status"] == "success", (title, query, answer)
                    values = [float(r["value"][1]) for r in answer["data"]["result"]]
                    if not values or all(math.isnan(v) for v in values):
                        empty.append(f"{title}: {query}")
                return empty

            deadline = time.monotonic() + 40
            while empty := empty_panels():
                assert time.monotonic() < deadline, "\n".join(empty)
                time.sleep(1)
        finally:
            process.terminate()
            process.wait(timeout=20)


def test_logs_are_json_lines_with_the_batch_fields(
    running: tuple[Any, int, list[int]], redis_url: str
) -> None:
    """Every log line is JSON; each batch event has the batch fields; no secret or token."""
    worker_process, _, _ = running
    wait_until(lambda: '"event": "batch"' in worker_process.logs(), what="a batch event")
    connection = redis.Redis.from_url(redis_url)
    token = connection.hget(f"tagsync:{{{APPID}}}:token", "token")
    lines = [line for line in worker_process.logs().splitlines() if line.strip()]
    events = [json.loads(line) for line in lines]  # every line parses
    batches = [e for e in events if e.get("event") == "batch"]
    assert batches
    for event in batches:
        assert {
            "account",
            "tag",
            "op",
            "size",
            "errcode",
            "duration",
            "attempt",
            "message_id",
        } <= set(event)
    assert any(
        e.get("logger", "").startswith("dramatiq") for e in events
    )  # dramatiq's own, as JSON
    text = "\n".join(lines)
    assert SECRET not in text
    assert isinstance(token, bytes) and token.decode() not in text


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(min_value=0, max_value=10_000, allow_nan=False), max_size=60))
def test_observe_many_is_each_value_observed(values: list[float]) -> None:
    """`observe_many` (one write per bucket) exports exactly what one `observe` per value
    does: the same buckets, count and sum."""
    # Given: two histograms of the intent-age buckets
    from prometheus_client import CollectorRegistry, Histogram, generate_latest

    from worker.observability.metrics import INTENT_AGE, observe_many

    buckets = INTENT_AGE._upper_bounds
    one, many = CollectorRegistry(), CollectorRegistry()
    each = Histogram("age", "age", buckets=buckets, registry=one)
    batch = Histogram("age", "age", buckets=buckets, registry=many)
    # When
    for value in values:
        each.observe(value)
    observe_many(batch, values)

    # Then
    def exported(registry: CollectorRegistry) -> list[str]:
        lines = generate_latest(registry).decode().splitlines()
        return [line for line in lines if "_created" not in line]

    assert exported(many) == exported(one)


def test_own_and_dramatiq_log_lines_stay_whole_across_threads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """tagsync's events (written by structlog) and stdlib loggers' (dramatiq's) share one
    stream and one lock: from many threads at once every line is one whole JSON object,
    none lost, secrets masked in both."""
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    configure_logging("json")
    REDACTOR.add("sekret-value-for-logs")
    own, foreign = structlog.get_logger("tagsync.test"), logging.getLogger("dramatiq.test")
    per_thread = 200

    def emit(n: int) -> None:
        for i in range(per_thread):
            own.info("own", thread=n, i=i, pad="x" * 2000, leak="sekret-value-for-logs")
            foreign.warning("foreign %d %d %s sekret-value-for-logs", n, i, "y" * 2000)

    threads = [threading.Thread(target=emit, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    lines = stream.getvalue().splitlines()
    events = [json.loads(line) for line in lines]  # raises on a torn line
    assert sum(e["event"] == "own" for e in events) == 8 * per_thread
    assert sum(e["event"].startswith("foreign") for e in events) == 8 * per_thread
    assert {e["logger"] for e in events} == {"tagsync.test", "dramatiq.test"}
    assert "sekret-value-for-logs" not in stream.getvalue()


def test_a_closed_stderr_does_not_stop_the_caller(monkeypatch: pytest.MonkeyPatch) -> None:
    """As stdlib's handler does, a log line that cannot be written is dropped, not raised."""
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    configure_logging("json")
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # where stdlib reports its own error
    stream.close()
    structlog.get_logger("tagsync.test").warning("nowhere to go")
    logging.getLogger("dramatiq.test").warning("nor this")
