from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

import storage as st
from tests import pg


def deep_subset(match: Any, payload: Any) -> bool:
    """The caller-supplied matcher: ``match`` is a deep subset of ``payload``."""
    if isinstance(match, dict):
        return isinstance(payload, dict) and all(
            k in payload and deep_subset(v, payload[k]) for k, v in match.items()
        )
    return bool(match == payload)


@pytest.fixture(params=["sqlite", "postgres"])
async def storage(request: pytest.FixtureRequest, tmp_path: Any) -> AsyncIterator[st.Storage]:
    """One contract suite over every backend: SQLite on a file (WAL, synchronous=full), and
    PostgreSQL on a fresh database of the session's throwaway cluster."""
    if request.param == "postgres":
        cluster = request.getfixturevalue("pg_cluster")
        url = await pg.create_database(cluster)
        try:
            async with st.PostgresStorage.open(url) as p:
                yield p
        finally:
            await pg.drop_database(cluster, url)
        return
    async with st.SQLiteStorage.open(tmp_path / "wf.db", synchronous="full") as s:
        yield s


async def make_run(s: st.Storage, run_id: str = "run-1", **kw: Any) -> st.RunRecord:
    kw.setdefault("workflow_id", "wf")
    kw.setdefault("created_at", 1000.0)
    created = await s.create_run(st.CreateRun(run_id=run_id, **kw))
    return created.run
