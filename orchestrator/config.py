"""The daemon configuration (SPEC §8): a strict TOML loader into frozen dataclasses.

Unknown sections or keys and wrong types are refused with :class:`ConfigError`, which names the
dotted key, the value and what was expected. Paths (``daemon.socket``, ``storage.path``,
``workflows.paths``, ``logging.file``) are resolved relative to the config file's directory;
durations (``daemon.shutdown_grace``) are parsed to float seconds.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Final, Literal

from runtime import durations

__all__ = [
    "Config",
    "ConfigError",
    "DaemonConfig",
    "HttpConfig",
    "LimitsConfig",
    "LoggingConfig",
    "RuntimeConfig",
    "StorageConfig",
    "TelemetryConfig",
    "WorkflowsConfig",
    "load_config",
]


class ConfigError(ValueError):
    """A configuration the daemon refuses; ``key`` is the dotted key (or ``""`` for the file)."""

    def __init__(self, key: str, message: str, *, source: Path | None = None) -> None:
        where = f"{source}: " if source is not None else ""
        super().__init__(f"{where}{key + ': ' if key else ''}{message}")
        self.key = key
        self.detail = message
        self.source = source


@dataclass(frozen=True, slots=True)
class DaemonConfig:
    socket: Path
    allowed_uids: tuple[int, ...] = ()
    event_loop: Literal["asyncio", "uvloop"] = "uvloop"
    max_active_runs: int = 1000
    warm_runs: int = 10000
    shutdown_grace: float = 10.0  # seconds
    max_request_bytes: int = 16777216
    max_recoveries: int = 5
    id: str = ""  # the name `wf daemons` shows; "" = "<hostname>:<pid>"
    lease: float = 10.0  # seconds a silent daemon keeps its runs (SPEC §13)
    poll: float | None = None  # cluster poll; None = min(1 s, lease/3) (NOTIFY is the fast path)


@dataclass(frozen=True, slots=True)
class StorageConfig:
    path: Path
    synchronous: Literal["full", "normal"] = "full"
    url: str = ""  # "postgresql://...": PostgreSQL instead of the SQLite file at `path`


@dataclass(frozen=True, slots=True)
class WorkflowsConfig:
    paths: tuple[Path, ...]
    modules: tuple[str, ...] = ("examples.workflows",)


@dataclass(frozen=True, slots=True)
class RuntimeConfig:
    step_threads: int = 32
    process_workers: int = 0
    deadlock_timeout: float = 2.0  # seconds a body may sit on a foreign await nothing can end


@dataclass(frozen=True, slots=True)
class LoggingConfig:
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["json", "console"] = "json"
    file: Path | None = None  # None: stdout


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    max_payload_bytes: int = 2097152
    max_journal_entries: int = 100000


@dataclass(frozen=True, slots=True)
class RetentionConfig:
    """Ages (seconds) after which ended runs and stored events are pruned; None: kept forever."""

    completed: float | None = 30 * 86400.0
    failed: float | None = 90 * 86400.0  # also compensated, compensation_failed, timed_out
    cancelled: float | None = 90 * 86400.0
    events: float | None = 7 * 86400.0


@dataclass(frozen=True, slots=True)
class HttpConfig:
    """``[http]`` (SPEC §12): ``host``/``port`` come from ``listen``; ``host`` None = off."""

    host: str | None = None
    port: int = 8490
    token: str = ""  # "" = a random one kept in token_file
    token_file: Path | None = None  # None: beside the database (<db>.http-token)
    allowed_hosts: tuple[str, ...] = ()  # Host header names accepted besides the listen host

    @property
    def enabled(self) -> bool:
        return self.host is not None


LOOPBACK_HOSTS: Final = ("localhost", "127.0.0.1", "::1")


@dataclass(frozen=True, slots=True)
class TelemetryConfig:
    """``[telemetry]`` (SPEC §12 traces): OTLP/HTTP to ``otlp_endpoint`` and/or one JSON line
    per span on stdout (``console``); neither = no traces. Needs the ``otel`` extra."""

    otlp_endpoint: str = ""
    console: bool = False
    service_name: str = "wf"

    @property
    def enabled(self) -> bool:
        return bool(self.otlp_endpoint) or self.console


@dataclass(frozen=True, slots=True)
class Config:
    daemon: DaemonConfig
    storage: StorageConfig
    workflows: WorkflowsConfig
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    telemetry: TelemetryConfig = field(default_factory=TelemetryConfig)
    base_dir: Path = field(default_factory=Path.cwd)
    source: Path | None = None  # the file it was loaded from

    @classmethod
    def default(cls, base_dir: Path | str = ".") -> Config:
        """The SPEC §8 defaults, with paths relative to ``base_dir``."""
        return _build({}, Path(base_dir).resolve(), None)


# --- loading -----------------------------------------------------------------------------------


def load_config(path: Path | str) -> Config:
    """Read and check a config file; raise :class:`ConfigError` on any problem."""
    path = Path(path)
    try:
        with path.open("rb") as fh:
            raw = tomllib.load(fh)
    except FileNotFoundError as exc:
        raise ConfigError("", "config file not found", source=path) from exc
    except OSError as exc:
        raise ConfigError("", f"cannot read config file ({exc.strerror})", source=path) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("", f"invalid TOML ({exc})", source=path) from exc
    return _build(raw, path.resolve().parent, path)


# A key's checker takes (dotted key, raw value, base dir) and returns the typed value.
_Checker = Callable[[str, Any, Path], Any]


def _fail(key: str, value: Any, expected: str) -> ConfigError:
    return ConfigError(key, f"got {value!r} ({type(value).__name__}), expected {expected}")


def _int(minimum: int) -> _Checker:
    def check(key: str, value: Any, base: Path) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _fail(key, value, "an integer")
        if value < minimum:
            raise _fail(key, value, f"an integer >= {minimum}")
        return value

    return check


def _choice(*choices: str) -> _Checker:
    def check(key: str, value: Any, base: Path) -> str:
        if not isinstance(value, str) or value not in choices:
            raise _fail(key, value, "one of " + ", ".join(repr(c) for c in choices))
        return value

    return check


def _path(key: str, value: Any, base: Path) -> Path:
    if not isinstance(value, str) or not value:
        raise _fail(key, value, "a non-empty path string")
    return (base / value).resolve()


def _database_url(key: str, value: Any, base: Path) -> str:
    if value == "":
        return ""
    if not isinstance(value, str) or not value.startswith(("postgresql://", "postgres://")):
        raise _fail(key, value, "empty (SQLite at storage.path) or a postgresql:// URL")
    return value


def _optional_path(key: str, value: Any, base: Path) -> Path | None:
    if value == "":
        return None
    return _path(key, value, base)


def _path_list(key: str, value: Any, base: Path) -> tuple[Path, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise _fail(key, value, "a list of path strings")
    return tuple((base / v).resolve() for v in value)


def _str_list(key: str, value: Any, base: Path) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise _fail(key, value, "a list of non-empty strings")
    return tuple(value)


def _uid_list(key: str, value: Any, base: Path) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value
    ):
        raise _fail(key, value, "a list of non-negative integer uids")
    return tuple(value)


def _bool(key: str, value: Any, base: Path) -> bool:
    if not isinstance(value, bool):
        raise _fail(key, value, "true or false")
    return value


def _endpoint(key: str, value: Any, base: Path) -> str:
    text = _str(key, value, base)
    if text and not text.startswith(("http://", "https://")):
        raise _fail(key, value, "'' (off) or an http:// or https:// URL")
    return text


def _str(key: str, value: Any, base: Path) -> str:
    if not isinstance(value, str):
        raise _fail(key, value, "a string")
    return value


def _listen(key: str, value: Any, base: Path) -> tuple[str | None, int]:
    """``"host:port"`` (``"[::1]:8490"`` for IPv6) or ``""`` (HTTP off)."""
    expected = "'host:port' such as '127.0.0.1:8490', or '' to turn HTTP off"
    if not isinstance(value, str):
        raise _fail(key, value, expected)
    if value == "":
        return None, 0
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise _fail(key, value, expected)
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def _duration(key: str, value: Any, base: Path) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise _fail(key, value, "a duration such as '10s' or a number of seconds")
    try:
        return durations.to_seconds(value)
    except ValueError as exc:
        raise _fail(key, value, "a duration such as '10s' or a number of seconds") from exc


def _lease(key: str, value: Any, base: Path) -> float:
    seconds = _duration(key, value, base)
    if seconds < 0.5:
        raise _fail(key, value, "a duration of at least 0.5s (renewed every third of it)")
    return seconds


def _poll(key: str, value: Any, base: Path) -> float | None:
    """The cluster poll: "" for the default (a third of the lease, 1 s at most)."""
    if value == "":
        return None
    seconds = _duration(key, value, base)
    if seconds <= 0:
        raise _fail(key, value, "a duration > 0 ('' for min(1s, lease/3))")
    return seconds


def _age(key: str, value: Any, base: Path) -> float | None:
    """A retention age: a duration, or "" / 0 for keep forever."""
    if value == "" or (not isinstance(value, bool) and value == 0):
        return None
    seconds = _duration(key, value, base)
    if seconds < 0:
        raise _fail(key, value, "a duration >= 0 ('' or 0: keep forever)")
    return seconds


_SECTIONS: Final[dict[str, tuple[type[Any], dict[str, tuple[_Checker, Any]]]]] = {
    # section -> (dataclass, {key: (checker, raw default)})
    "daemon": (
        DaemonConfig,
        {
            "socket": (_path, "./wf.sock"),
            "allowed_uids": (_uid_list, []),
            "event_loop": (_choice("asyncio", "uvloop"), "uvloop"),
            "max_active_runs": (_int(1), 1000),
            "warm_runs": (_int(0), 10000),
            "shutdown_grace": (_duration, "10s"),
            "max_request_bytes": (_int(1024), 16777216),
            "max_recoveries": (_int(1), 5),
            "id": (_str, ""),
            "lease": (_lease, "10s"),
            "poll": (_poll, ""),
        },
    ),
    "storage": (
        StorageConfig,
        {
            "path": (_path, "./wf.db"),
            "synchronous": (_choice("full", "normal"), "full"),
            "url": (_database_url, ""),
        },
    ),
    "workflows": (
        WorkflowsConfig,
        {
            "paths": (_path_list, ["."]),
            "modules": (_str_list, ["examples.workflows"]),
        },
    ),
    "runtime": (
        RuntimeConfig,
        {
            "step_threads": (_int(1), 32),
            "process_workers": (_int(0), 0),
            "deadlock_timeout": (_duration, "2s"),
        },
    ),
    "logging": (
        LoggingConfig,
        {
            "level": (_choice("debug", "info", "warning", "error"), "info"),
            "format": (_choice("json", "console"), "json"),
            "file": (_optional_path, ""),
        },
    ),
    "limits": (
        LimitsConfig,
        {
            "max_payload_bytes": (_int(1), 2097152),
            "max_journal_entries": (_int(1), 100000),
        },
    ),
    "http": (
        dict,  # flattened into HttpConfig by _http below
        {
            "listen": (_listen, ""),
            "token": (_str, ""),
            "token_file": (_optional_path, ""),
            "allowed_hosts": (_str_list, []),
        },
    ),
    "retention": (
        RetentionConfig,
        {
            "completed": (_age, "30d"),
            "failed": (_age, "90d"),
            "cancelled": (_age, "90d"),
            "events": (_age, "7d"),
        },
    ),
    "telemetry": (
        TelemetryConfig,
        {
            "otlp_endpoint": (_endpoint, ""),
            "console": (_bool, False),
            "service_name": (_str, "wf"),
        },
    ),
}


# What each telemetry option needs installed (the ``otel`` extra): asking for traces without
# it is a start-up error naming the key, never a silent no-op.
_TELEMETRY_NEEDS: Final = {
    "telemetry.otlp_endpoint": ("opentelemetry.sdk", "opentelemetry.exporter.otlp.proto.http"),
    "telemetry.console": ("opentelemetry.sdk",),
}


def _check_telemetry(cfg: TelemetryConfig) -> None:
    import importlib.util

    asked = {"telemetry.otlp_endpoint": bool(cfg.otlp_endpoint),
             "telemetry.console": cfg.console}
    for key, modules in _TELEMETRY_NEEDS.items():
        if not asked[key]:
            continue
        for module in modules:
            try:
                found = importlib.util.find_spec(module) is not None
            except ModuleNotFoundError:
                found = False
            if not found:
                raise ConfigError(key, f"traces need the 'otel' extra ({module} is not "
                                       "installed): pip install 'wf-engine[otel]'")


def _http(values: Mapping[str, Any]) -> HttpConfig:
    host, port = values["listen"]
    token = values["token"]
    if host is not None and host not in LOOPBACK_HOSTS and not token:
        # TCP has no peer-uid check: a generated token in a file is only safe on loopback.
        raise ConfigError(
            "http.token",
            f"http.listen is {host!r}, not a loopback address: set an explicit http.token",
        )
    return HttpConfig(host=host, port=port, token=token, token_file=values["token_file"],
                      allowed_hosts=values["allowed_hosts"])


def _build(raw: Mapping[str, Any], base: Path, source: Path | None) -> Config:
    try:
        for name, value in raw.items():
            if name not in _SECTIONS:
                raise ConfigError(name, f"unknown section (known: {', '.join(sorted(_SECTIONS))})")
            if not isinstance(value, dict):
                raise _fail(name, value, "a table")
        sections: dict[str, Any] = {}
        for name, (cls, keys) in _SECTIONS.items():
            table: Mapping[str, Any] = raw.get(name, {})
            for key in table:
                if key not in keys:
                    raise ConfigError(
                        f"{name}.{key}", f"unknown key (known: {', '.join(sorted(keys))})"
                    )
            values = {
                key: check(f"{name}.{key}", table.get(key, default), base)
                for key, (check, default) in keys.items()
            }
            if cls is dict:
                sections[name] = _http(values)
                continue
            assert {f.name for f in fields(cls)} == set(values)
            sections[name] = cls(**values)
        _check_telemetry(sections["telemetry"])
    except ConfigError as exc:
        if source is None or exc.source is not None:
            raise
        raise ConfigError(exc.key, exc.detail, source=source) from exc
    return Config(**sections, base_dir=base, source=source)
