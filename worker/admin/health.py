"""Is the deployment well? The verdict of ``tagsync status --check``, from the status report.

- down (exit 2): no worker process has beaten lately (Redis unreachable is down too: the
  command cannot read anything and says so);
- degraded (exit 1): an account or one of its APIs is paused (quota, credentials, budget);
  the oldest pending intent is older than ``max_age_s``; an account has work waiting and no
  access token (its token cannot be had: credentials, IP whitelist, WeChat unreachable);
- healthy (exit 0) otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

#: Default for ``--max-age``: the backlog's oldest intent may wait this long, s (the
#: TagsyncBacklogOld alert's threshold).
MAX_PENDING_AGE_S = 900.0
#: Work waiting this long without a token cached means the token cannot be had, s (a worker
#: fetches one within a second of its first flush).
TOKEN_GRACE_S = 120.0

Verdict = Literal["healthy", "degraded", "down"]
EXIT_CODES: dict[Verdict, int] = {"healthy": 0, "degraded": 1, "down": 2}


@dataclass
class Health:
    verdict: Verdict = "healthy"
    problems: list[str] = field(default_factory=list)

    def worse(self, verdict: Verdict, problem: str) -> None:
        self.problems.append(problem)
        if EXIT_CODES[verdict] > EXIT_CODES[self.verdict]:
            self.verdict = verdict

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.verdict]

    def as_dict(self) -> dict[str, Any]:
        return {"status": self.verdict, "problems": self.problems}


def assess(report: Mapping[str, Any], *, max_age_s: float = MAX_PENDING_AGE_S) -> Health:
    """The verdict on a ``collect_status`` report."""
    health = Health()
    alive = [w for w in report["workers"] if w["alive"]]
    if not alive:
        gone = len(report["workers"])
        health.worse(
            "down",
            f"no live worker: {gone} without a heartbeat for 20 s"
            if gone
            else "no live worker: none has sent a heartbeat",
        )
    for appid, state in report["accounts"].items():
        for scope, pause in state["pauses"].items():
            what = "" if scope == "account" else f" {scope}"
            health.worse(
                "degraded",
                f"account {appid}{what} paused ({pause['reason']}, errcode "
                f"{pause['errcode'] or '-'}): {pause['message']}",
            )
    waiting: dict[str, float] = {}
    for tag in report["tags"]:
        age = tag["oldest_pending_age_s"]
        if age is None:
            continue
        waiting[tag["account"]] = max(waiting.get(tag["account"], 0.0), age)
        if age > max_age_s:
            health.worse(
                "degraded",
                f"account {tag['account']} tag {tag['tag_id']}: oldest pending intent "
                f"{age:.0f} s old (over {max_age_s:.0f} s)",
            )
    for appid, age in sorted(waiting.items()):
        state = report["accounts"].get(appid)
        if state and not state["token"]["cached"] and not state["pauses"] and age > TOKEN_GRACE_S:
            health.worse(
                "degraded",
                f"account {appid}: no access token while work waits {age:.0f} s "
                "(token refresh failing?)",
            )
    return health
