"""tagsync's Prometheus metrics (prometheus-client, multiprocess-safe).

Worker processes write to the directory named by ``PROMETHEUS_MULTIPROC_DIR`` (set by
``worker.runtime.launch`` before any process starts, wiped at start); ``metrics_server``
serves them together with dramatiq's own and with backlog gauges read from Redis at
scrape time. No metric carries an openid. The ``account`` label is on the counters an
operator reads per account (received, applied, dead letters, errcodes, pauses, deferrals,
token refreshes and their failures), on openids per call (11 buckets x 2 ops) and on the
backlog gauges; the other histograms stay per deployment, so an account costs a bounded
few dozen series, never one per openid or call.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter as Tally

from prometheus_client import Counter, Histogram

#: Batch sizes worth telling apart: full (50) versus almost full versus small.
BATCH_BUCKETS = (1, 5, 10, 20, 30, 40, 45, 49, 50)

INTENTS_RECEIVED = Counter(
    "tagsync_intents_received_total",
    "Intents taken from the queue, by account and op.",
    ["account", "op"],
)
INTENTS_SUPERSEDED = Counter(
    "tagsync_intents_superseded_total",
    "Intents replaced by a later intent for the same fan and tag.",
)
INTENTS_STALE = Counter(
    "tagsync_intents_stale_total", "Intents dropped as older than one already applied or in flight."
)
INTENTS_APPLIED = Counter(
    "tagsync_intents_applied_total", "Intents applied at WeChat.", ["account", "op"]
)
INTENTS_DEAD_LETTERED = Counter(
    "tagsync_intents_dead_lettered_total",
    "Intents dead-lettered (account is empty for rows naming no served account).",
    ["account", "op", "reason", "errcode"],
)
BATCH_SIZE = Histogram(
    "tagsync_batch_size_openids",
    "Openids per WeChat batch call, by account and op.",
    ["account", "op"],
    buckets=BATCH_BUCKETS,
)
WECHAT_REQUEST = Histogram(
    "tagsync_wechat_request_duration_seconds",
    "WeChat API calls by endpoint and outcome (ok, an error class, or network).",
    ["endpoint", "outcome"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
WECHAT_ERRCODES = Counter(
    "tagsync_wechat_errcodes_total",
    "WeChat answers by account, endpoint and errcode (0 = ok).",
    ["account", "endpoint", "errcode"],
)
RATE_LIMIT_WAIT = Histogram(
    "tagsync_rate_limit_wait_seconds",
    "Time slept for a call slot of the account's rate limit.",
    buckets=(0.001, 0.01, 0.025, 0.05, 0.1, 0.25),
)
RATE_LIMIT_DEFERRALS = Counter(
    "tagsync_rate_limit_deferrals_total",
    "Flushes rescheduled because no call slot of the account was near.",
    ["account"],
)
RATE_LIMIT_SLOTS_MISSED = Counter(
    "tagsync_rate_limit_slots_missed_total",
    "Call slots that went unused: their flush came back, or woke, too late for them.",
)
PAUSES = Counter(
    "tagsync_account_pauses_total",
    "Account pauses begun, by account, reason and errcode.",
    ["account", "reason", "errcode"],
)
TOKEN_REFRESHES = Counter(
    "tagsync_token_refreshes_total",
    "Access tokens fetched from WeChat by this worker, by account.",
    ["account"],
)
TOKEN_REFRESH_FAILURES = Counter(
    "tagsync_token_refresh_failures_total",
    "Token fetches that failed, by account and errcode ('network' without an answer).",
    ["account", "errcode"],
)
TOKEN_REJECTIONS = Counter(
    "tagsync_token_rejections_total", "Calls WeChat refused for their token."
)
INTENT_AGE = Histogram(
    "tagsync_intent_age_at_apply_seconds",
    "From an intent's event time to WeChat's answer applying it.",
    buckets=(0.1, 0.25, 0.5, 1, 1.5, 2, 3, 5, 10, 30, 60, 300, 1800, 3600),
)


def observe_many(histogram: Histogram, values: list[float]) -> None:
    """``histogram.observe(v)`` for each of ``values``, in one write per bucket touched.

    In multiprocess mode each observation is two writes to a memory-mapped file; a batch
    of 50 intents' ages was 100 of them per WeChat call. Same samples, same buckets as 50
    ``observe`` calls (prometheus-client keeps per-bucket counts, summed when scraped).
    """
    if not values:
        return
    bounds = histogram._upper_bounds  # prometheus-client's own, with +Inf last
    histogram._sum.inc(sum(values))
    for index, count in Tally(bisect_left(bounds, value) for value in values).items():
        histogram._buckets[index].inc(count)
