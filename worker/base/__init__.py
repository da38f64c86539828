"""What every part of the worker stands on; it imports nothing of the worker but the
redaction of secrets.

- ``settings``: the environment, read and checked once (``Settings``, ``SettingsError``,
  WeChat's default API base);
- ``lua``: loading the Lua scripts that sit beside the modules using them, and reading
  Redis's replies as text;
- ``backoff``: the one retry backoff formula (exponential, full jitter).
"""
