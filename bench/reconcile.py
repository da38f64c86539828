"""Scenario `reconcile`: `tagsync reconcile --dry-run` of 1,000,000 openids against a tag
of 1,000,000 fans, 10% off each way; its wall time, phases and peak memory.

The simulator's tag gets its fans in bulk (``/_sim/members``); the desired file is the
listing shifted by a tenth (a tenth to untag, a tenth of new fans to tag) and shuffled, as
a CRM export comes. The command runs as its own process, at the account's default rate,
and its peak RSS is read from ``wait4``. A second run at a tenth of the size shows that the
memory does not follow the size (ratio near 1).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import tempfile
import time
from typing import Any

from bench.harness import Stack, stack

#: Fans on the tag, and openids in the desired file (quick: a tenth).
SIZE = 1_000_000
#: The share of each side that differs from the other.
DRIFT = 0.10
#: The smaller run that shows the memory bound: a tenth of the size.
SMALL_FACTOR = 10


def _fans(bench: Stack, count: int) -> list[str]:
    """The simulator's first ``count`` fans, in its listing order (100,000 a request)."""
    found: list[str] = []
    while len(found) < count:
        page = bench.sim_get(
            "/_sim/fans", offset=len(found), limit=min(100_000, count - len(found))
        )
        found.extend(page["openids"])
    return found


def _watch_peak_rss(process: subprocess.Popen[bytes]) -> int:
    """Wait for ``process``; its peak resident memory in kB (VmHWM, read every 10 ms).

    Not ``wait4``'s ru_maxrss: Linux counts in it the memory of the process before its exec,
    a copy of this one, which holds the million-openid lists."""
    peak = 0
    status = f"/proc/{process.pid}/status"
    while process.poll() is None:
        try:
            with open(status, encoding="ascii") as proc:
                for line in proc:
                    if line.startswith("VmHWM:"):
                        peak = max(peak, int(line.split()[1]))
        except (OSError, ValueError):
            pass  # exiting: the last reading stands
        time.sleep(0.01)
    return peak


def _reconcile_once(bench: Stack, fans: list[str], size: int, name: str) -> dict[str, Any]:
    """A tag carried by the first ``size`` fans, a desired file shifted by the drift; run
    `tagsync reconcile --dry-run` on them and return its figures."""
    drift = int(size * DRIFT)
    tag_id = bench.client.create_tag(name).id
    bench.sim_post("/_sim/members", {"tagid": tag_id, "count": size})
    desired = fans[drift : size + drift]
    random.Random(size).shuffle(desired)
    with tempfile.TemporaryDirectory(prefix="bench-reconcile-") as workdir:
        source = os.path.join(workdir, "desired.txt")
        with open(source, "w", encoding="ascii") as out:
            out.write("\n".join(desired))
            out.write("\n")
        del desired
        args = ["reconcile", "--tag", str(tag_id), "--from", source, "--dry-run", "--json"]
        with (
            open(os.path.join(workdir, "out"), "w+") as stdout,
            open(os.path.join(workdir, "err"), "w+") as stderr,
        ):
            started = time.monotonic()
            process = subprocess.Popen(
                [sys.executable, "-m", "worker", *args],
                env=bench.env,
                stdout=stdout,
                stderr=stderr,
            )
            peak_kb = _watch_peak_rss(process)
            wall = time.monotonic() - started
            stdout.seek(0)
            stderr.seek(0)
            output, errors = stdout.read(), stderr.read()
    if process.returncode != 0:
        raise RuntimeError(f"tagsync reconcile exited {process.returncode}: {errors[-2000:]}")
    outcome = json.loads(output)
    expected = (drift, drift, size - drift)
    found = (outcome["to_tag"], outcome["to_untag"], outcome["unchanged"])
    if found != expected:
        raise AssertionError(f"reconcile counted {found}, expected {expected}")
    timings = outcome["timings"]
    return {
        "wall_s": round(wall, 2),
        "read_s": round(timings["read_s"], 2),
        "fetch_s": round(timings["fetch_s"], 2),
        "diff_s": round(timings["diff_s"], 2),
        "peak_rss_mb": round(peak_kb / 1024, 1),
    }


def run(*, quick: bool = False) -> dict[str, Any]:
    """Reconcile SIZE against SIZE (quick: a tenth), then a tenth of that; the figures."""
    size = SIZE // 10 if quick else SIZE
    small = size // SMALL_FACTOR
    total_fans = size + int(size * DRIFT)
    with stack(fans=total_fans, workers=False) as bench:
        fans = _fans(bench, total_fans)
        large = _reconcile_once(bench, fans, size, "bench-reconcile")
        little = _reconcile_once(bench, fans, small, "bench-reconcile-small")
    return {
        "openids": size,
        "drift": DRIFT,
        **large,
        f"wall_s_{small // 1000}k": little["wall_s"],
        f"peak_rss_mb_{small // 1000}k": little["peak_rss_mb"],
        "rss_ratio": round(large["peak_rss_mb"] / little["peak_rss_mb"], 2),
    }
