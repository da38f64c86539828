"""What an operator sees: metrics, structured logs and secret redaction.

- ``metrics``: the Prometheus metrics (multiprocess mode); ``metrics_server``: the
  endpoint, with backlog gauges read from Redis at scrape time;
- ``logs``: structlog set-up (JSON or console); ``log_context``: the message context of
  every log line;
- ``redaction``: secrets and tokens masked in logs, errors and output.
"""
