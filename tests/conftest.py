"""Fixtures shared by every test directory: the throwaway PostgreSQL cluster (tests/pg.py).

Also a guard against a CPython 3.11.7 bug that failed whole test runs at random: a garbage
collection during ``ast.parse`` (pytest rewriting a module's asserts at import) can run a
finalizer that imports another module, whose rewrite parses again; the nested parse resets
the AST converter's interpreter-wide recursion counter and the outer one fails with
``SystemError: AST constructor recursion depth mismatch`` (seen at import of hypothesis in
the terminal summary, and of a test module). pytest's rewrite therefore runs with the
collector off (``_rewrite_test`` is pytest's own function; the guard is skipped if it moves).
"""

from __future__ import annotations

import functools
import gc
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from _pytest.assertion import rewrite as _rewrite

from tests import pg


def _without_gc(parse: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(parse)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        enabled = gc.isenabled()
        gc.disable()
        try:
            return parse(*args, **kwargs)
        finally:
            if enabled:
                gc.enable()

    return wrapper


if hasattr(_rewrite, "_rewrite_test"):
    _rewrite._rewrite_test = _without_gc(_rewrite._rewrite_test)


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
