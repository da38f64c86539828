"""The pending buffers in Redis: where intents are coalesced, leased, taken and settled.

Per (account, tag), under the hash tag ``{account:tag}`` (one Redis Cluster slot):

- ``pending:tag`` / ``pending:untag``: zsets openid -> event ts; a fan sits in one at most,
  holding its latest intent (last write wins; ties go to the later arrival);
- ``inflight``: the fresh batch a flush is sending (hash openid -> ts, and ``~op``);
- ``split:tag`` / ``split:untag``: a batch WeChat refused for a bad openid, kept until every
  openid in it is applied or dead-lettered (hash openid -> ts, ``~op``, ``~plan``: the
  ``worker.split`` plan as JSON), so a split that must wait resumes where it stopped;
- ``sent`` / ``sent:old``: hashes openid -> ts of the intent last taken for a call
  (sent or about to be), two generations of the ordering window in event time, so a late,
  older intent is dropped as stale instead of undoing a newer one;
- ``lease``: which flush may touch the tag now (renewed before every call);
  ``sched``: a flush message is on its way (now, later, backoff, or slot: waiting for a
  call slot reserved further ahead); ``since``: when the oldest pending intent started
  waiting (for the linger); ``failures``: the tag's current failure streak (for backoff);
- ``attempts`` / ``first_seen``: per openid, failed attempts and when the first failed;
- ``gone``: WeChat said the tag does not exist; ingest dead-letters its intents.

``tagsync:tags`` indexes every (account, tag) ever seen, for the sweep and ``status``;
``tagsync:gone`` indexes gone tags. Keys and scripts: ``keys.py``; the store: ``store.py``.
"""

from worker.pending.keys import GONE_INDEX, TAG_INDEX, TagKeys
from worker.pending.store import (
    INGEST_CHUNK,
    SCHED_GRACE_MS,
    Acked,
    Batch,
    Exhausted,
    IngestResult,
    LeaseLost,
    PendingStore,
    Retried,
    TagStatus,
    Take,
)

__all__ = [
    "GONE_INDEX",
    "INGEST_CHUNK",
    "SCHED_GRACE_MS",
    "TAG_INDEX",
    "Acked",
    "Batch",
    "Exhausted",
    "IngestResult",
    "LeaseLost",
    "PendingStore",
    "Retried",
    "TagKeys",
    "TagStatus",
    "Take",
]
