"""The threads a worker process runs its low-rate accounts' flushes on (in-process)."""

from __future__ import annotations

import threading
import time

from tests.helpers import wait_until
from worker.runtime.local_pool import LocalPool


def test_work_runs_on_at_most_size_threads_and_a_stop_waits_for_it() -> None:
    """Three pieces of work on two threads: the third waits for a free thread; waiting for
    the pool to be idle ends once all three ran, and not before."""
    pool = LocalPool("test-pool", size=2)
    release = threading.Event()
    ran: list[str] = []

    def work() -> None:
        ran.append(threading.current_thread().name)
        release.wait(10)

    for _ in range(3):
        pool.submit(work)
    wait_until(lambda: len(ran) == 2, what="two pieces of work running")
    time.sleep(0.2)
    assert len(ran) == 2  # no third thread
    assert not pool.wait_idle(0.1)
    release.set()
    assert pool.wait_idle(10)
    assert len(ran) == 3 and len(set(ran)) == 2


def test_a_failed_piece_of_work_leaves_its_thread_working() -> None:
    """An exception is logged; the one thread goes on to the next piece of work."""
    pool = LocalPool("test-pool", size=1)
    done = threading.Event()

    def fail() -> None:
        raise RuntimeError("boom")

    pool.submit(fail)
    pool.submit(done.set)
    assert done.wait(10)
    assert pool.wait_idle(10)
