"""Load the Lua scripts that sit as ``.lua`` files beside the modules that use them, and read
what Redis answers."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from importlib import resources
from typing import Any

from redis import Redis
from redis.commands.core import Script
from redis.exceptions import NoScriptError


@cache
def script_text(package: str, name: str) -> str:
    """The source of the script ``name`` in ``package`` (e.g. ``"worker.wechat"``)."""
    return resources.files(package).joinpath(name).read_text(encoding="utf-8")


def load_script(redis: Redis, package: str, name: str) -> Script:
    """A registered script: run by EVALSHA, re-sent by EVAL after a Redis restart."""
    return redis.register_script(script_text(package, name))


def run_script(redis: Any, script: Script, keys: Sequence[Any], args: Sequence[Any]) -> Any:
    """Run ``script`` as ``Script.__call__`` does (EVALSHA; on NOSCRIPT, loaded and run
    again), straight through ``execute_command``: a flush runs three scripts a call, and
    redis-py's wrappers around EVALSHA (argument tuples, imports, deprecation checks) cost
    more than the command itself. ``keys`` may be pre-encoded bytes (``TagKeys.encoded``)."""
    try:
        return redis.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
    except NoScriptError:
        # Redis restarted or failed over (or a cluster slot moved): load it where it runs.
        redis.script_load(script.script)
        return redis.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)


def text(value: Any) -> str:
    """A Redis reply as text: bytes decoded (clients without ``decode_responses``), else str."""
    return value.decode() if isinstance(value, bytes) else str(value)
