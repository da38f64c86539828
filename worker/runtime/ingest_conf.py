"""gunicorn's settings for the HTTP ingest: ``gunicorn -c python:worker.runtime.ingest_conf``.

The Procfile's ``ingest`` line gives the bind address (the platform's ``$PORT``); the rest is
here so every deployment gets the same: gunicorn's own lines through tagsync's logging (JSON
in JSON mode, like the worker's), and a shutdown that lets requests in flight finish.
"""

from __future__ import annotations

import logging
from typing import Any

import redis
import structlog
from gunicorn.glogging import Logger

from producers.redis_url import connect, redacted
from worker.base.settings import Settings, SettingsError
from worker.observability.logs import configure_logging

#: Processes and threads: an enqueue is one Redis round trip, so threads carry the load.
workers = 2
threads = 4
#: On SIGTERM, requests in flight get this long to finish (an enqueue takes milliseconds; a
#: stalled Redis is answered 429 after the producers' 5 s timeout).
graceful_timeout = 10


class StructlogLogger(Logger):  # type: ignore[misc]
    """gunicorn's error and access loggers, rendered by tagsync's logging on stderr."""

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        try:
            log_format = Settings.from_env().log_format
        except SettingsError:
            log_format = "json"  # the app refuses the settings itself, in a line of JSON
        configure_logging(log_format)
        for own in (self.error_log, self.access_log):
            own.handlers[:] = []  # gunicorn's plain-text handlers
            own.propagate = True


logger_class = StructlogLogger
# gunicorn 23+ opens a control socket at one path per user: a second ingest on the host
# would take it from the first. Nothing here uses it.
control_socket_disable = True
# Access lines would be one per request; switch on with --access-logfile - when wanted.
accesslog: str | None = None
loglevel = logging.getLevelName(logging.INFO).lower()


def on_starting(server: Any) -> None:
    """gunicorn's hook, in the master before any worker: refuse to start without the settings
    the ingest cannot work without (it would answer 401 or 429 to every request, silently);
    say at once when Redis does not answer (``/healthz`` then says why, and requests get 429
    until it does)."""
    log = structlog.get_logger("tagsync.ingest")
    try:
        settings = Settings.from_env()
        settings.require_ingest()
    except SettingsError as exc:
        log.error("tagsync.exit", error=str(exc), exit_code=2)
        raise SystemExit(2) from None
    assert settings.redis_url is not None  # require_ingest checked it
    try:
        connect(settings.redis_url, socket_connect_timeout=2.0, socket_timeout=2.0).ping()
    except (redis.RedisError, OSError) as exc:
        log.error("ingest.redis_unreachable", url=redacted(settings.redis_url), error=str(exc))
