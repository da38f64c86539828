"""The simulator's faults and limits: one typed, checked configuration (``/_sim/config``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

#: Garbled answers the simulator can give: a 200 whose body is not JSON, a proxy's HTML
#: 502 page, JSON without errcode, and a connection reset after the call was carried out.
MALFORMED_KINDS = ("not_json", "html_502", "no_errcode", "reset")


class ConfigError(ValueError):
    """A `/_sim/config` body with an unknown key or a value of the wrong shape."""


def _share(name: str, value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise ConfigError(f"{name} must be a number from 0 to 1")
    return float(value)


def _positive(name: str, value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ConfigError(f"{name} must be a positive number")
    return value


def _count_or_none(name: str, value: Any) -> Any:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise ConfigError(f"{name} must be a whole number or null")
    return value


def _non_negative(name: str, value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ConfigError(f"{name} must be a number of 0 or more")
    return value


def _flag(name: str, value: Any) -> Any:
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be true or false")
    return value


def _latency(name: str, value: Any) -> Any:
    if (
        not isinstance(value, list)
        or len(value) != 2
        or not all(isinstance(v, int | float) and v >= 0 for v in value)
        or value[0] > value[1]
    ):
        raise ConfigError(f"{name} must be [low, high] milliseconds")
    return list(value)


def _errcodes(name: str, value: Any) -> Any:
    if not isinstance(value, dict) or not all(isinstance(v, int) for v in value.values()):
        raise ConfigError(f"{name} must map API paths to errcodes")
    return dict(value)


def _kind(name: str, value: Any) -> Any:
    if value not in (*MALFORMED_KINDS, "mixed"):
        raise ConfigError(f"{name} must be one of {', '.join(MALFORMED_KINDS)}, mixed")
    return value


@dataclass(frozen=True)
class SimConfig:
    """Every fault and limit of a simulated account, with WeChat's defaults."""

    busy_rate: float = field(default=0.0, metadata={"check": _share})
    http500_rate: float = field(default=0.0, metadata={"check": _share})
    timeout_rate: float = field(default=0.0, metadata={"check": _share})
    #: How long a "timeout" answer hangs; longer than any sane client read timeout.
    timeout_hang_s: float = field(default=30.0, metadata={"check": _positive})
    latency_ms: list[float] = field(default_factory=lambda: [0, 0], metadata={"check": _latency})
    #: Calls of the account in one calendar second beyond this answer 45011.
    rate_per_sec: int | None = field(default=None, metadata={"check": _count_or_none})
    #: Calls a day per API path beyond this answer 45009.
    daily_quota: int | None = field(default=None, metadata={"check": _count_or_none})
    max_tags_per_fan: int = field(default=20, metadata={"check": _positive})
    token_ttl_s: float = field(default=7200, metadata={"check": _positive})
    page_size: int = field(default=10_000, metadata={"check": _positive})
    #: {path: errcode}: every call of that path answers the errcode (e.g. 48001, 40164).
    forced_errcodes: dict[str, int] = field(default_factory=dict, metadata={"check": _errcodes})
    #: Batch calls on tags that exist answer 45159 at this rate (as WeChat does right
    #: after a tag's creation and under concurrent calls on one fan); nothing is applied.
    spurious_45159_rate: float = field(default=0.0, metadata={"check": _share})
    #: Answers that are not WeChat's JSON, at this rate, of ``malformed_kind``.
    malformed_rate: float = field(default=0.0, metadata={"check": _share})
    malformed_kind: str = field(default="mixed", metadata={"check": _kind})
    #: Each `component/api_authorizer_token` answer carries a new refresh token (as
    #: WeChat may do), so a client that keeps the old one loses the authorization.
    rotate_refresh_token: bool = field(default=False, metadata={"check": _flag})
    #: How long a replaced refresh token still works, in seconds (concurrent refreshers).
    refresh_token_grace_s: float = field(default=10.0, metadata={"check": _non_negative})

    def updated(self, changes: dict[str, Any]) -> SimConfig:
        """A copy with ``changes`` applied, each checked first; ``ConfigError`` names a bad one."""
        checks = {f.name: f.metadata["check"] for f in fields(self)}
        checked = {}
        for name, value in changes.items():
            if name not in checks:
                raise ConfigError(f"unknown config key {name!r}")
            checked[name] = checks[name](name, value)
        return replace(self, **checked)

    def document(self) -> dict[str, Any]:
        """The whole configuration as the JSON `/_sim/config` answers."""
        return asdict(self)
