from __future__ import annotations

import pytest


@pytest.fixture(params=["warm", "cold"])
def replay(request: pytest.FixtureRequest) -> str:
    """Run a test both ways: body kept suspended across parks, and replayed from the journal."""
    return str(request.param)
