"""The composition root over SQLite: ``Orchestrator.open(config)`` is the one-line embedding;
it opens what the config names and hands the engine its storage."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

import storage
from orchestrator import Orchestrator
from orchestrator.config import Config
from tests.orchestrator import engine_workflows


async def test_orchestrator_open_is_the_one_line_embedding(tmp_path: Path) -> None:
    cfg = Config.default(tmp_path)
    cfg = dataclasses.replace(
        cfg,
        daemon=dataclasses.replace(cfg.daemon, socket=tmp_path / "wf.sock"),
        storage=dataclasses.replace(cfg.storage, path=tmp_path / "wf.db"),
    )
    orch = Orchestrator.open(cfg, registry=engine_workflows.registry(), import_modules=False,
                             configure_logging=False)
    with pytest.raises(RuntimeError, match="not open"):
        orch.engine  # noqa: B018  (nothing is opened before `async with`)
    async with orch:
        assert isinstance(orch.storage, storage.SQLiteStorage)
        assert orch.engine.storage is orch.storage  # the engine received it, opened nothing
        await orch.submit("echo", {"a": 1}, run_id="r")
        assert (await orch.wait("r", timeout=5))["output"] == {"echo": {"a": 1}}
    assert (tmp_path / "wf.db").exists()
