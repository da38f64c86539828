"""What an operator sees: metrics, structured logs and secret redaction (leaves: they
import nothing of the worker).

- ``metrics``: the Prometheus metrics (multiprocess mode; ``worker.runtime.metrics_server``
  serves them);
- ``logs``: structlog set-up (JSON or console); ``log_context``: the message context of
  every log line;
- ``redaction``: secrets and tokens masked in logs, errors and output.
"""
