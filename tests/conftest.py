"""Fixtures shared by every test directory: the throwaway PostgreSQL cluster (tests/pg.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from tests import pg


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[pg.Cluster]:
    """One private PostgreSQL cluster per test session (skips, or fails under CI, without it)."""
    yield from pg.start_cluster()


@pytest.fixture
async def pg_url(pg_cluster: pg.Cluster) -> AsyncIterator[str]:
    """A fresh, migrated database on the session cluster, dropped after the test."""
    url = await pg.create_database(pg_cluster)
    try:
        yield url
    finally:
        await pg.drop_database(pg_cluster, url)
