"""``python -m tests.chaos_report FILE``: the table of docs/reliability.md from ``make chaos``."""

from __future__ import annotations

import json
import sys


def table(path: str) -> str:
    """One markdown row per scenario the chaos run reported."""
    lines = [
        "| fault | size | intents accepted | lost | recovered (s) | calls (minimum) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    with open(path, encoding="utf-8") as rows:
        for raw in rows:
            row = json.loads(raw)
            recover = "-" if row["recover_s"] is None else f"{row['recover_s']:.2f}"
            lines.append(
                f"| {row['fault']} | {row['size']} | {row['accepted']:,} | {row['lost']} "
                f"| {recover} | {row['calls']:,} ({row['minimum_calls']:,}) |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    print(table(sys.argv[1]))
