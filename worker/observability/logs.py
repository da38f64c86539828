"""Logging: structlog for our events, the stdlib loggers (dramatiq, redis, urllib3) through
the same renderer, JSON lines in production, and secrets redacted on the way out."""

from __future__ import annotations

import logging
import sys
from typing import Any, Literal

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from worker.observability.redaction import REDACTOR


def redact_secrets(logger: WrappedLogger, method: str, event_dict: EventDict) -> EventDict:
    """A structlog processor that masks the secret and tokens in every value, URLs included."""
    return {key: REDACTOR.redact_value(value) for key, value in event_dict.items()}


def _redact_rendered(logger: WrappedLogger, method: str, rendered: Any) -> Any:
    # Last net: tracebacks are rendered after the per-field pass, and may quote URLs.
    return REDACTOR.redact(rendered) if isinstance(rendered, str) else rendered


def configure_logging(
    log_format: Literal["json", "console"] | None = None, *, level: int = logging.INFO
) -> None:
    """Route structlog and stdlib logging to stderr as JSON lines or console text."""
    if log_format is None:
        log_format = "console" if sys.stderr.isatty() else "json"
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Processor
    if log_format == "json":
        renderer = structlog.processors.JSONRenderer()
        shared.append(structlog.processors.dict_tracebacks)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        # Below the level, a call returns at once: debug events cost nothing on hot paths.
        wrapper_class=structlog.make_filtering_bound_logger(level),
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            redact_secrets,
            renderer,
            _redact_rendered,
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("urllib3", "redis"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
