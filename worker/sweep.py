"""The sweep: every few seconds, one process finds tags with work but no flush coming.

It closes the last gaps for lost wake-ups: a worker killed between claiming a flush and
sending it, a flush message lost with its worker, a lease left by a dead flush.
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import structlog
from dramatiq import Middleware
from redis import Redis

from worker.accounts.directory import AccountDirectory
from worker.gate import AccountGate
from worker.pending import PendingStore
from worker.queues import SendFlush, send_flushes
from worker.wechat.client import WeChatClient
from worker.wechat.errors import WeChatError

log = structlog.get_logger("tagsync.sweep")

#: Seconds between sweeps (across all processes: one sweeps per interval).
SWEEP_INTERVAL_S = 1.0
#: The lock that makes one process sweep per interval.
SWEEP_LOCK = "tagsync:sweep"
#: The lock that makes one process look at gone tags per interval (one tags/get call).
REVIVE_LOCK = "tagsync:revive"
#: How often gone tags are looked up again.
REVIVE_INTERVAL_MS = 60_000
#: How long after lifting a pause the paused tags are looked for a second time.
WAKE_SETTLE_S = 0.5


def lift_pause(
    gate: AccountGate, store: PendingStore, account: str, queue: Redis | None = None
) -> bool:
    """Lift every pause of the account and wake its tags that wait one out; True if it was paused.

    Woken tags lose their delayed look-again and get a flush at once. A flush that met
    the pause just before it was lifted may still be scheduling its wait (it saw the
    pause, then wake ran, then it wrote its wait), so the tags are
    looked at a second time a moment later; otherwise such a tag would sit out a pause
    that is over.
    """
    queue = queue or store.redis  # the queue's Redis (TAGSYNC_QUEUE_URL), if another
    lifted = gate.resume(account)
    send_flushes(queue, store.wake(account))
    time.sleep(WAKE_SETTLE_S)
    send_flushes(queue, store.wake(account))
    return lifted


def revive_tags(store: PendingStore, client: WeChatClient, gate: AccountGate | None = None) -> int:
    """Accept intents again for the client's gone tags that ``tags/get`` lists again.

    The ``tags/get`` call passes the account's gate (rate, budget, pauses) like any other;
    without a slot near, the look waits for the next sweep.
    """
    gone = [tag_id for account, tag_id in store.gone_tags() if account == client.appid]
    if not gone:
        return 0
    if gate is not None:
        admission = gate.admit(client.appid, api="tags/get")
        if admission.kind != "go":
            return 0
        time.sleep(admission.wait_ms / 1000)
    existing = {tag.id for tag in client.list_tags()}
    revived = [tag_id for tag_id in gone if tag_id in existing]
    for tag_id in revived:
        store.clear_gone(client.appid, tag_id)
        log.info("tag.revived", account=client.appid, tag=tag_id)
    return len(revived)


def sweep_once(
    store: PendingStore,
    send_flush: SendFlush,
    *,
    accounts: AccountDirectory | None = None,
    interval_s: float = SWEEP_INTERVAL_S,
) -> int:
    """Sweep unless another process did within the interval; return flushes sent.

    With ``accounts``, only their tags are swept (another deployment's, or a removed
    account's, are left alone) and their gone tags are looked up again now and then.
    """
    owner = uuid.uuid4().hex
    if not store.redis.set(SWEEP_LOCK, owner, nx=True, px=int(interval_s * 1000)):
        return 0
    served = accounts.appids() if accounts is not None else None
    if accounts is not None and store.redis.set(REVIVE_LOCK, owner, nx=True, px=REVIVE_INTERVAL_MS):
        for appid in sorted({account for account, _ in store.gone_tags()} & (served or set())):
            account = accounts.get(appid)
            if account is not None:
                try:
                    revive_tags(store, account.client, account.gate)
                except WeChatError as exc:  # one account's trouble must not stop the others
                    log.warning("tag.revive_failed", account=appid, error=str(exc))
    claimed = store.sweep(accounts=served)
    for account_id, tag_id in claimed:
        send_flush(account_id, tag_id, 0)
    if claimed:
        log.info("sweep.rescheduled", tags=len(claimed))
    return len(claimed)


class Sweeper(Middleware):
    """Runs ``sweep_once`` on a daemon thread in every worker process."""

    def __init__(self, sweep: Any, *, interval_s: float = SWEEP_INTERVAL_S) -> None:
        self._sweep = sweep
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def after_worker_boot(self, broker: Any, worker: Any) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="tagsync-sweep", daemon=True)
        self._thread.start()

    def before_worker_shutdown(self, broker: Any, worker: Any) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self._sweep()
            except Exception:  # a Redis hiccup must not end the sweeping
                log.exception("sweep.failed")
