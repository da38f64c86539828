"""``python -m bench [--quick] [SCENARIO ...]``: run the benchmarks, write bench/results.json."""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import (
    accounts,
    capacity,
    failures,
    ingest,
    pipeline,
    reconcile,
    redaction,
    scale,
    simulator,
    store,
)
from worker.observability.logs import configure_logging

#: Every scenario, by name, in the order they run.
SCENARIOS: dict[str, Callable[..., dict[str, Any]]] = {
    "ingest_bulk": ingest.run_bulk,
    "ingest_single": ingest.run_single,
    "fill": pipeline.run_fill,
    "rate": pipeline.run_rate,
    "backlog_fill": failures.run_backlog_fill,
    "bad_openids": failures.run_bad_openids,
    "latency": pipeline.run_latency,
    "memory": pipeline.run_memory,
    "simulator": simulator.run,
    "accounts": accounts.run,
    "reconcile": reconcile.run,
    "capacity": capacity.run,
    "store": store.run,
    "scale": scale.run,
    "redaction": redaction.run,
}


def main() -> int:
    """Run the chosen scenarios (default all); print a table and write the results file."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "scenarios", nargs="*", metavar="SCENARIO", help=f"any of {', '.join(SCENARIOS)}"
    )
    parser.add_argument("--quick", action="store_true", help="a tenth of the size: a smoke test")
    parser.add_argument("--out", default=str(Path(__file__).with_name("results.json")))
    args = parser.parse_args()
    # The table is the output; the client's per-call debug events would drown it.
    configure_logging("console", level=logging.WARNING)
    unknown = sorted(set(args.scenarios) - set(SCENARIOS))
    if unknown:
        parser.error(f"unknown scenario {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")
    chosen = args.scenarios or list(SCENARIOS)
    python = platform.python_version()
    results: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {python}",
        "quick": args.quick,
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "scenarios": {},
    }
    for name in chosen:
        started = time.monotonic()
        print(f"running {name}...", flush=True)
        figures = SCENARIOS[name](quick=args.quick)
        figures["seconds"] = round(time.monotonic() - started, 1)
        results["scenarios"][name] = figures
    print(f"\n{'scenario':<12} figures")
    for name, figures in results["scenarios"].items():
        print(f"{name:<12} " + ", ".join(f"{k}={v}" for k, v in figures.items()))
    if not args.quick:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
        print(f"\nwritten to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
