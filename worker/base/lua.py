"""Load the Lua scripts that sit as ``.lua`` files beside the modules that use them, and read
what Redis answers."""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Any

from redis import Redis
from redis.commands.core import Script


@cache
def script_text(package: str, name: str) -> str:
    """The source of the script ``name`` in ``package`` (e.g. ``"worker.wechat"``)."""
    return resources.files(package).joinpath(name).read_text(encoding="utf-8")


def load_script(redis: Redis, package: str, name: str) -> Script:
    """A registered script: run by EVALSHA, re-sent by EVAL after a Redis restart."""
    return redis.register_script(script_text(package, name))


def text(value: Any) -> str:
    """A Redis reply as text: bytes decoded (clients without ``decode_responses``), else str."""
    return value.decode() if isinstance(value, bytes) else str(value)
