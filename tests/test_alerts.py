"""Alerts as code: the Prometheus rule file, its promtool unit tests, its runbook (the docs
page docs/runbook.md), and the metrics it needs, exported by a real worker."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
from prometheus_client.parser import text_string_to_metric_families

import producers
from tests.helpers import APPID, SECRET, Sim, wait_until
from tests.test_docs import anchors
from worker.wechat import WeChatClient

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "grafana" / "alerts" / "tagsync.rules.yml"
# Outside the rules glob (grafana/alerts/*.yml), which holds rule files only.
RULE_TESTS = ROOT / "grafana" / "alerts" / "tests" / "tagsync.rules.test.yml"
RUNBOOK_PAGE = "docs/runbook.md"
RUNBOOK = ROOT / RUNBOOK_PAGE


def promtool() -> str:
    """Debian's promtool: a failure under CI (``.ci/run`` installs it), else a skip."""
    found = shutil.which("promtool")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is missing (Debian's prometheus package)")
        pytest.skip("promtool is not installed (apt-get install prometheus)")
    return found


# -- the rule file, read as plain text ------------------------------------------------------
# No YAML parser is a dependency; both files keep one shape (an alert per `- alert:` item,
# a case per `- eval_time:` item), and the promtool tests below hold their meaning.


def alerts() -> dict[str, str]:
    """Each alert's name and its block of the rule file."""
    blocks = re.split(r"^\s*- alert: ", RULES.read_text(), flags=re.MULTILINE)[1:]
    return {block.split("\n", 1)[0].strip(): block for block in blocks}


def annotation(block: str, key: str) -> str:
    """An annotation's text: a quoted one-liner or a folded (>-) block."""
    match = re.search(rf"^(\s*){key}: (.*)$", block, flags=re.MULTILINE)
    assert match is not None, key
    indent, value = len(match.group(1)), match.group(2).strip()
    if value != ">-":
        return value.strip('"')
    lines = []
    for line in block[match.end() :].split("\n")[1:]:
        if line.strip() and len(line) - len(line.lstrip()) <= indent:
            break
        lines.append(line.strip())
    return " ".join(line for line in lines if line)


def cases() -> list[tuple[str, bool, str]]:
    """Every promtool case: (alert name, fires, the case's text)."""
    found = []
    for item in re.split(r"^\s*- eval_time: ", RULE_TESTS.read_text(), flags=re.MULTILINE)[1:]:
        case = item.split("\n  - name:", 1)[0]  # a case ends where the next test starts
        name = re.search(r"alertname: (\w+)", case)
        assert name is not None, case
        found.append((name.group(1), "exp_alerts: []" not in case, case))
    return found


def runbook_entries() -> dict[str, str]:
    """The runbook page's entries: each ### heading and its text, up to the next heading."""
    entries = re.split(r"^### ", RUNBOOK.read_text(encoding="utf-8"), flags=re.MULTILINE)[1:]
    return {entry.split("\n", 1)[0].strip(): entry.split("\n#", 1)[0] for entry in entries}


def test_promtool_accepts_every_file_of_the_rules_glob() -> None:
    """`promtool check rules grafana/alerts/*.yml` (as a Prometheus config would load them)
    accepts every file, and counts every alert this test reads."""
    # Given: what the glob matches, the rule file and nothing else
    files = sorted(RULES.parent.glob("*.yml"))
    assert files == [RULES]
    # When
    result = subprocess.run(
        [promtool(), "check", "rules", *map(str, files)],
        capture_output=True,
        text=True,
        check=False,
    )
    # Then
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alerts())} rules found" in result.stdout


def test_promtool_unit_tests_pass() -> None:
    """Every alert fires, and stays quiet, in the promtool cases written for it."""
    result = subprocess.run(
        [promtool(), "test", "rules", str(RULE_TESTS)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_annotations_cases_and_a_runbook_entry() -> None:
    """Summary, description (naming the account where the alert is per account), a runbook
    link to a heading of the runbook page with an entry under the alert's name, one firing
    case with labels and annotations checked and one case where it must not fire."""
    runbook = runbook_entries()
    headings = anchors(RUNBOOK)
    rule_cases = cases()
    assert alerts()
    for name, block in alerts().items():
        summary, description = annotation(block, "summary"), annotation(block, "description")
        assert summary and len(description) > 40, name
        link = annotation(block, "runbook")
        assert link == f"{RUNBOOK_PAGE}#{name.lower()}", name
        assert link.split("#", 1)[1] in headings, f"{name}: {link} is no heading of the page"
        assert name in runbook and len(runbook[name]) > 200, f"{name}: no runbook entry"
        assert f"`{name}`" in runbook_table(), f"{name}: not in the table of alerts"
        firing = [case for alert, fires, case in rule_cases if alert == name and fires]
        quiet = [case for alert, fires, case in rule_cases if alert == name and not fires]
        assert firing and quiet, f"{name}: firing {len(firing)}, quiet {len(quiet)} cases"
        for case in firing:
            assert "exp_labels:" in case and "exp_annotations:" in case, name
            assert "description:" in case and "summary:" in case, name
        if any(re.search(r"^\s+account: ", case, flags=re.MULTILINE) for case in firing):
            assert "$labels.account" in description, f"{name}: description lacks the account"
    assert set(runbook) == set(alerts()), "runbook entries of alerts that do not exist"


def runbook_table() -> str:
    """The runbook page before its first entry, where the table of alerts is."""
    return RUNBOOK.read_text(encoding="utf-8").split("\n### ", 1)[0]


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
