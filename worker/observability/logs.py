"""Logging: structlog for our events, the stdlib loggers (dramatiq, redis, urllib3) through
the same renderer, JSON lines in production, and secrets redacted on the way out."""

from __future__ import annotations

import contextlib
import logging
import sys
from typing import Any, Literal

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from worker.observability.redaction import REDACTOR

_NO_LOCK = contextlib.nullcontext()


def redact_secrets(logger: WrappedLogger, method: str, event_dict: EventDict) -> EventDict:
    """A structlog processor that masks credential parameters in every value, URLs included
    (known secrets are masked in the rendered line: ``_redact_rendered``)."""
    return {key: REDACTOR.redact_fields(value) for key, value in event_dict.items()}


def _redact_rendered(logger: WrappedLogger, method: str, rendered: Any) -> Any:
    # Known secrets, and the last net: tracebacks are rendered after the per-field pass.
    return REDACTOR.redact(rendered) if isinstance(rendered, str) else rendered


class _HandlerLogger:
    """Writes structlog's rendered lines to a stdlib handler's stream, under the handler's
    lock, so that they never interleave with the lines of stdlib loggers (dramatiq's)."""

    def __init__(self, handler: logging.StreamHandler[Any], name: str) -> None:
        self._handler = handler
        #: For structlog.stdlib.add_logger_name.
        self.name = name

    def msg(self, message: str) -> None:
        handler = self._handler
        with handler.lock or _NO_LOCK:
            try:
                handler.stream.write(message + "\n")
                handler.stream.flush()
            except (OSError, ValueError):
                pass  # a closed or broken stderr: as stdlib's handler, never stop the caller

    debug = info = warning = warn = error = critical = exception = fatal = log = msg


class _HandlerLoggerFactory:
    def __init__(self, handler: logging.StreamHandler[Any]) -> None:
        self._handler = handler

    def __call__(self, *args: Any) -> _HandlerLogger:
        return _HandlerLogger(self._handler, str(args[0]) if args else "")


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
    ]
    stamp = structlog.processors.TimeStamper(fmt="iso", utc=True)
    renderer: Processor
    if log_format == "json":
        renderer = structlog.processors.JSONRenderer()
        shared.append(structlog.processors.dict_tracebacks)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, stamp],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            redact_secrets,
            renderer,
            _redact_rendered,
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    # tagsync's own events are rendered by structlog and written straight to the handler's
    # stream: through stdlib logging (a LogRecord, the handler chain, ProcessorFormatter)
    # they cost twice as much, a tenth of a worker's CPU at one batch line a call. So they
    # reach this handler only: a stdlib handler added later gets dramatiq's lines, not ours.
    structlog.configure(
        # Stamped after the per-field pass: a timestamp has a ':' but never a secret.
        processors=[*shared, redact_secrets, stamp, renderer, _redact_rendered],
        logger_factory=_HandlerLoggerFactory(handler),
        # Below the level, a call returns at once: debug events cost nothing on hot paths.
        wrapper_class=structlog.make_filtering_bound_logger(level),
        cache_logger_on_first_use=True,
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("urllib3", "redis"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
