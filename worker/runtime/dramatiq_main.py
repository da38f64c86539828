"""``python -m worker.runtime.dramatiq_main ARGS``: dramatiq's CLI with tagsync's logging.

dramatiq's main process calls ``logging.basicConfig``, which does nothing once the root
logger has a handler: configuring first makes its own lines JSON (or console) like ours.
"""

from __future__ import annotations

import sys

from dramatiq.cli import main

from worker.base.settings import Settings, SettingsError
from worker.observability.logs import configure_logging

if __name__ == "__main__":
    try:
        configure_logging(Settings.from_env().log_format)
    except SettingsError as exc:
        print(f"tagsync worker: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    sys.argv[0] = "dramatiq"
    raise SystemExit(main())  # type: ignore[no-untyped-call]
