"""A dramatiq middleware that binds each message's id, actor and queue to the log context."""

from __future__ import annotations

from typing import Any

import structlog
from dramatiq import Middleware


class LogContext(Middleware):
    """Every log event while a message is processed carries message_id, actor and queue."""

    def before_process_message(self, broker: Any, message: Any) -> None:
        structlog.contextvars.bind_contextvars(
            message_id=message.message_id, actor=message.actor_name, queue=message.queue_name
        )

    def after_process_message(
        self, broker: Any, message: Any, *, result: Any = None, exception: Any = None
    ) -> None:
        structlog.contextvars.clear_contextvars()

    after_skip_message = after_process_message
