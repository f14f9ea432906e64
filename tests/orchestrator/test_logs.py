from __future__ import annotations

import asyncio
import io
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import structlog

from orchestrator import logs
from orchestrator.config import LoggingConfig


@pytest.fixture(autouse=True)
def reset_structlog() -> Iterator[None]:
    yield
    structlog.reset_defaults()
    for sub in list(logs._subscribers):
        sub.close()


def configure(level: str = "info", fmt: str = "json") -> io.StringIO:
    sink = io.StringIO()
    cfg = LoggingConfig(level=level, format=fmt)  # type: ignore[arg-type]
    logs.configure_logging(cfg, sink=sink, cache_logger_on_first_use=False)
    return sink


def lines(sink: io.StringIO) -> list[dict]:
    return [orjson.loads(line) for line in sink.getvalue().splitlines()]


def test_json_line_has_event_timestamp_level() -> None:
    sink = configure()
    structlog.get_logger().info("run.started", run_id="r1", workflow_id="w")
    (record,) = lines(sink)
    assert record["event"] == "run.started"
    assert record["level"] == "info"
    assert record["run_id"] == "r1" and record["workflow_id"] == "w"
    assert record["timestamp"].endswith("Z")  # ISO-8601 UTC
    assert "T" in record["timestamp"]


def test_level_filtering() -> None:
    sink = configure(level="warning")
    log = structlog.get_logger()
    log.debug("a")
    log.info("b")
    log.warning("c")
    log.error("d")
    assert [r["event"] for r in lines(sink)] == ["c", "d"]


def test_non_json_values_are_rendered_not_fatal() -> None:
    sink = configure()
    structlog.get_logger().info("x", obj=object(), path=Path("/a"))
    (record,) = lines(sink)
    assert "object" in record["obj"]


def test_exceptions_are_formatted() -> None:
    sink = configure()
    try:
        raise ValueError("bad")
    except ValueError as exc:
        structlog.get_logger().error("boom", exc_info=exc)
    (record,) = lines(sink)
    assert "ValueError: bad" in record["exception"]


def test_console_format() -> None:
    sink = configure(fmt="console")
    structlog.get_logger().info("daemon.ready", socket="/x")
    out = sink.getvalue()
    assert "daemon.ready" in out and "socket=/x" in out


def test_file_output_is_created_0600(tmp_path: Path) -> None:
    path = tmp_path / "wf.log"
    logs.configure_logging(LoggingConfig(file=path), cache_logger_on_first_use=False)
    structlog.get_logger().info("to.file")
    logs.configure_logging(LoggingConfig(), sink=io.StringIO())  # closes the file
    assert orjson.loads(path.read_text())["event"] == "to.file"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_fan_out_without_subscribers_passes_the_dict_through() -> None:
    event = {"event": "x"}
    assert logs.fan_out(None, "info", event) is event
    assert logs.subscriber_count() == 0


async def test_subscriber_receives_every_record() -> None:
    configure(level="info")
    log = structlog.get_logger()
    with logs.subscribe(10) as sub:
        log.info("run.started", run_id="r1")
        log.debug("filtered.out")
        log.warning("run.waiting", run_id="r1")
        first, second = await anext(sub), await anext(sub)
    assert first["event"] == "run.started" and first["level"] == "info"
    assert "timestamp" in first and first["run_id"] == "r1"
    assert second["event"] == "run.waiting"
    assert logs.subscriber_count() == 0
    assert [r async for r in sub] == []  # closed: iteration ends


async def test_records_from_worker_threads_reach_subscribers() -> None:
    configure()
    with logs.subscribe(10) as sub:
        await asyncio.to_thread(structlog.get_logger().info, "step.completed", step_id="s")
        record = await asyncio.wait_for(anext(sub), 10)
    assert record["event"] == "step.completed"


async def test_full_subscription_drops_and_reports_lag() -> None:
    sink = configure()
    log = structlog.get_logger()
    with logs.subscribe(2) as sub:
        for i in range(5):
            log.info("e", n=i)
        got = [await anext(sub) for _ in range(3)]
        log.info("e", n=5)
        got.append(await anext(sub))
    assert got == [
        {**got[0], "n": 0},
        {**got[1], "n": 1},
        {"type": "lagged", "dropped": 3},
        {**got[3], "n": 5},
    ]
    assert sub.dropped_total == 3
    logs.flush()
    assert len(lines(sink)) == 6  # the log output itself never drops


async def test_lines_on_the_loop_are_written_together_once_per_iteration(tmp_path: Path) -> None:
    path = tmp_path / "wf.log"
    logs.configure_logging(LoggingConfig(file=path), cache_logger_on_first_use=False)
    log = structlog.get_logger()
    log.info("a")
    log.info("b")
    assert path.read_text() == ""  # buffered until the loop comes round
    await asyncio.sleep(0)
    assert [orjson.loads(line)["event"] for line in path.read_text().splitlines()] == ["a", "b"]


async def test_warnings_and_other_threads_write_at_once_behind_buffered_lines(
    tmp_path: Path,
) -> None:
    path = tmp_path / "wf.log"
    logs.configure_logging(LoggingConfig(file=path), cache_logger_on_first_use=False)
    log = structlog.get_logger()

    def events() -> list[str]:
        return [orjson.loads(line)["event"] for line in path.read_text().splitlines()]

    log.info("first")
    log.warning("urgent")
    assert events() == ["first", "urgent"]
    log.info("second")
    await asyncio.to_thread(log.info, "from.thread")
    assert events()[:4] == ["first", "urgent", "second", "from.thread"]


def test_buffered_lines_are_written_by_flush_and_at_reconfigure(tmp_path: Path) -> None:
    path = tmp_path / "wf.log"
    logs.configure_logging(LoggingConfig(file=path), cache_logger_on_first_use=False)

    loop = asyncio.new_event_loop()

    def log_and_stop() -> None:
        structlog.get_logger().info("last.words")
        loop.stop()  # the loop ends with this iteration, before its flush callback runs

    loop.call_soon(log_and_stop)
    loop.run_forever()
    loop.close()
    assert path.read_text() == ""
    logs.flush()
    assert orjson.loads(path.read_text())["event"] == "last.words"
    structlog.get_logger().info("more")  # no loop running: written at once
    logs.configure_logging(LoggingConfig(), sink=io.StringIO())
    assert path.read_text().count("\n") == 2


def test_the_line_logger_answers_log_levels_only() -> None:
    logger = logs._LineLogger(logs._LineSink(io.StringIO()))
    assert callable(logger.info) and callable(logger.msg)
    with pytest.raises(AttributeError):
        logger.__deepcopy__  # noqa: B018  (a probe copy.deepcopy makes)


async def test_embedded_orchestrator_honours_the_logging_section(tmp_path: Path) -> None:
    """``Orchestrator(config)`` configures logging from ``[logging]`` as the daemon does: at
    ``warning`` a run's info lines (submitted, started, completed) are not written."""
    import dataclasses

    from orchestrator import Orchestrator
    from orchestrator.config import Config
    from tests.reliability import rel_workflows  # noqa: F401  (registers rel-echo)

    def config(level: str, path: Path) -> Config:
        cfg = Config.default(tmp_path)
        return dataclasses.replace(
            cfg,
            daemon=dataclasses.replace(cfg.daemon, socket=tmp_path / "wf.sock"),
            storage=dataclasses.replace(cfg.storage, path=tmp_path / "wf.db"),
            logging=LoggingConfig(level=level, file=path),  # type: ignore[arg-type]
        )

    try:
        for level in ("warning", "info"):
            path = tmp_path / f"{level}.log"
            async with Orchestrator(config(level, path), import_modules=False) as orch:
                await orch.submit("rel-echo", {"x": 1}, run_id=f"r-{level}")
                assert (await orch.wait(f"r-{level}", timeout=5))["status"] == "completed"
            events = [orjson.loads(line)["event"] for line in path.read_text().splitlines()]
            if level == "warning":
                assert events == []
            else:
                assert {"run.submitted", "run.completed"} <= set(events)
    finally:
        logs.configure_logging(LoggingConfig(), sink=io.StringIO())  # closes the file
