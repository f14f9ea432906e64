from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.config import Config, ConfigError, load_config

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_defaults_match_the_spec(tmp_path: Path) -> None:
    cfg = Config.default(tmp_path)
    assert cfg.daemon.socket == tmp_path.resolve() / "wf.sock"
    assert cfg.daemon.allowed_uids == ()
    assert cfg.daemon.event_loop == "uvloop"
    assert cfg.daemon.max_active_runs == 1000
    assert cfg.daemon.warm_runs == 10000
    assert cfg.daemon.shutdown_grace == 10.0
    assert cfg.daemon.max_request_bytes == 16777216
    assert cfg.daemon.max_recoveries == 5
    assert cfg.daemon.poll is None  # min(1 s, lease/3)
    assert cfg.storage.path == tmp_path.resolve() / "wf.db"
    assert cfg.storage.synchronous == "full"
    assert cfg.storage.url == ""  # SQLite at storage.path
    assert cfg.workflows.paths == (tmp_path.resolve(),)
    assert cfg.workflows.modules == ("examples.workflows",)
    assert (cfg.runtime.step_threads, cfg.runtime.process_workers) == (32, 0)
    assert (cfg.logging.level, cfg.logging.format, cfg.logging.file) == ("info", "json", None)
    assert cfg.limits.max_payload_bytes == 2097152
    assert cfg.limits.max_journal_entries == 100000


def test_empty_file_gives_the_defaults(tmp_path: Path) -> None:
    loaded = load_config(write(tmp_path, ""))
    default = Config.default(tmp_path)
    for section in ("daemon", "storage", "workflows", "runtime", "logging", "limits"):
        assert getattr(loaded, section) == getattr(default, section)


def test_repo_config_loads() -> None:
    cfg = load_config(REPO / "config.toml")
    assert cfg.daemon.socket == REPO / "wf.sock"
    assert cfg.storage.path == REPO / "wf.db"


def test_paths_are_relative_to_the_config_file(tmp_path: Path, monkeypatch) -> None:
    sub = tmp_path / "etc"
    sub.mkdir()
    monkeypatch.chdir(tmp_path)
    cfg = load_config(
        write(
            sub,
            """
[daemon]
socket = "run/wf.sock"
shutdown_grace = "1m"
allowed_uids = [1000, 1001]
[storage]
path = "../data/wf.db"
synchronous = "normal"
[workflows]
paths = [".", "/opt/flows"]
modules = ["a.b", "c"]
[logging]
file = "wf.log"
level = "debug"
format = "console"
""",
        )
    )
    assert cfg.daemon.socket == sub.resolve() / "run" / "wf.sock"
    assert cfg.daemon.shutdown_grace == 60.0
    assert cfg.daemon.allowed_uids == (1000, 1001)
    assert cfg.storage.path == tmp_path.resolve() / "data" / "wf.db"
    assert cfg.storage.synchronous == "normal"
    assert cfg.workflows.paths == (sub.resolve(), Path("/opt/flows"))
    assert cfg.workflows.modules == ("a.b", "c")
    assert cfg.logging.file == sub.resolve() / "wf.log"
    assert cfg.base_dir == sub.resolve()


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[deamon]\nsocket = 'x'\n", "deamon"),
        ("[daemon]\nsokcet = 'x'\n", "daemon.sokcet"),
        ("daemon = 1\n", "daemon"),
        ("[daemon]\nsocket = 1\n", "daemon.socket"),
        ("[daemon]\nallowed_uids = ['me']\n", "daemon.allowed_uids"),
        ("[daemon]\nevent_loop = 'trio'\n", "daemon.event_loop"),
        ("[daemon]\nmax_active_runs = '1000'\n", "daemon.max_active_runs"),
        ("[daemon]\nmax_active_runs = true\n", "daemon.max_active_runs"),
        ("[daemon]\nwarm_runs = 1.5\n", "daemon.warm_runs"),
        ("[daemon]\nshutdown_grace = 'soon'\n", "daemon.shutdown_grace"),
        ("[daemon]\nmax_request_bytes = -1\n", "daemon.max_request_bytes"),
        ("[daemon]\nmax_recoveries = 0\n", "daemon.max_recoveries"),
        ("[daemon]\npoll = 0\n", "daemon.poll"),
        ("[daemon]\npoll = 'often'\n", "daemon.poll"),
        ("[storage]\npath = ''\n", "storage.path"),
        ("[storage]\nsynchronous = 'off'\n", "storage.synchronous"),
        ("[storage]\nurl = 'mysql://db/wf'\n", "storage.url"),
        ("[storage]\nurl = 5432\n", "storage.url"),
        ("[workflows]\npaths = '.'\n", "workflows.paths"),
        ("[workflows]\nmodules = [1]\n", "workflows.modules"),
        ("[runtime]\nstep_threads = 0\n", "runtime.step_threads"),
        ("[runtime]\nprocess_workers = 'many'\n", "runtime.process_workers"),
        ("[runtime]\nthreads = 1\n", "runtime.threads"),
        ("[logging]\nlevel = 'trace'\n", "logging.level"),
        ("[logging]\nformat = 'xml'\n", "logging.format"),
        ("[logging]\nfile = false\n", "logging.file"),
        ("[limits]\nmax_payload_bytes = '2MB'\n", "limits.max_payload_bytes"),
        ("[limits]\nmax_journal_entries = 0\n", "limits.max_journal_entries"),
        ("[limits]\nmax_steps = 1\n", "limits.max_steps"),
    ],
)
def test_refusals_name_the_key(tmp_path: Path, text: str, key: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.key == key
    message = str(info.value)
    assert key in message
    assert str(path) in message


def test_wrong_type_message_gives_value_and_expected_type(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, "[daemon]\nmax_active_runs = 'lots'\n"))
    assert "'lots'" in str(info.value) and "integer" in str(info.value)


def test_missing_file_and_bad_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "absent.toml")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(write(tmp_path, "[daemon\n"))


def test_config_is_frozen(tmp_path: Path) -> None:
    cfg = Config.default(tmp_path)
    with pytest.raises(AttributeError):
        cfg.daemon.socket = Path("x")  # type: ignore[misc]


def test_telemetry_section(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, '[telemetry]\notlp_endpoint = "http://127.0.0.1:4318"\n'
                                      'console = true\nservice_name = "svc"\n'))
    assert cfg.telemetry.enabled and cfg.telemetry.console
    assert cfg.telemetry.otlp_endpoint == "http://127.0.0.1:4318"
    assert cfg.telemetry.service_name == "svc"
    assert not load_config(write(tmp_path, "")).telemetry.enabled
    with pytest.raises(ConfigError, match=r"telemetry\.console"):
        load_config(write(tmp_path, '[telemetry]\nconsole = "yes"\n'))
    with pytest.raises(ConfigError, match=r"telemetry\.otlp_endpoint"):
        load_config(write(tmp_path, '[telemetry]\notlp_endpoint = "localhost:4318"\n'))


@pytest.mark.parametrize("text, key", [
    ('[telemetry]\nconsole = true\n', "telemetry.console"),
    ('[telemetry]\notlp_endpoint = "http://127.0.0.1:4318"\n', "telemetry.otlp_endpoint"),
])
def test_traces_without_the_otel_extra_are_a_start_up_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, key: str
) -> None:
    import importlib.util

    real = importlib.util.find_spec

    def without_otel(name: str, *args: object) -> object:
        return None if name.startswith("opentelemetry") else real(name, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(importlib.util, "find_spec", without_otel)
    with pytest.raises(ConfigError, match=rf"{key}: traces need the 'otel' extra"):
        load_config(write(tmp_path, text))


def test_daemon_poll_takes_a_duration(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "[daemon]\npoll = '5s'\n")).daemon.poll == 5.0
