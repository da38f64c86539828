"""Imported first by the ``tagsync`` command: one clear line when the ``worker`` extra is missing.

``pip install wechat-tagsync`` gives application code the producers only; the worker, the CLI
and the ingest server need ``wechat-tagsync[worker]``, and would otherwise die in a traceback.
"""

from __future__ import annotations

import importlib.util
import sys

#: The distributions of the ``worker`` extra, by the module each one installs.
WORKER_MODULES = ("requests", "structlog", "prometheus_client", "rich", "gunicorn")

missing = [name for name in WORKER_MODULES if importlib.util.find_spec(name) is None]
if missing:
    sys.exit(
        f"tagsync: the worker's packages are not installed ({', '.join(missing)}); "
        "run: pip install 'wechat-tagsync[worker]'"
    )
