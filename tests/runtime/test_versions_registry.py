"""Side-by-side versions in the registry (SPEC §14): explicit ``version=`` strings of one id
live together, the newest (natural order) is current; the source-hash default never pins."""

from __future__ import annotations

import dataclasses

import pytest

from runtime.workflow import Registry, WorkflowDefinition, version_key


async def body(input: object, ctx: object) -> None:
    return None


def define(version: str, *, pinned: bool = True, origin: str | None = None) -> WorkflowDefinition:
    return WorkflowDefinition(id="w", fn=body, version=version, pinned=pinned,
                              origin=origin or f"mod.v{version}")


def test_explicit_versions_register_side_by_side_and_the_newest_is_current() -> None:
    registry = Registry()
    for v in ("2", "10", "1"):
        registry.register(define(v))
    current = registry.get("w")
    assert current is not None and current.version == "10"
    assert registry.versions("w") == ["1", "2", "10"]
    found = registry.get_version("w", "2")
    assert found is not None and found.origin == "mod.v2"
    assert registry.get_version("w", "3") is None


def test_the_source_hash_default_never_registers_side_by_side() -> None:
    registry = Registry()
    registry.register(define("1"))
    with pytest.raises(ValueError, match="each need their own explicit version"):
        registry.register(define("abc123", pinned=False))
    registry = Registry()
    registry.register(define("abc123", pinned=False))
    with pytest.raises(ValueError, match="registered twice"):
        registry.register(define("1"))
    registry = Registry()
    registry.register(define("1"))
    with pytest.raises(ValueError, match="registered twice"):  # the same version twice
        registry.register(dataclasses.replace(define("1"), origin="elsewhere"))


def test_versions_sort_naturally() -> None:
    assert sorted(["1.10", "1.9", "10", "2"], key=version_key) == ["1.9", "1.10", "2", "10"]
