from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from runtime import durations, matching
from runtime.determinism import DeterministicRandom, hash_seed
from runtime.workflow import REGISTRY, Concurrency, Schedule, definition_of, workflow

VECTORS = Path(__file__).resolve().parents[3] / "shared" / "vectors" / "determinism.json"


def _vector_cases() -> list[dict]:
    return json.loads(VECTORS.read_text())["cases"]


@pytest.mark.parametrize("case", _vector_cases(), ids=lambda c: repr(c["run_id"]))
def test_random_and_uuid_match_reference_vectors(case: dict) -> None:
    assert hash_seed(case["run_id"]) == case["hash_seed"]
    rng = DeterministicRandom(case["run_id"])
    assert [rng.random() for _ in range(5)] == case["randoms"]
    rng = DeterministicRandom(case["run_id"])
    assert [rng.uuid(), rng.uuid()] == case["uuids"]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("250ms", 0.25), ("30s", 30), ("5m", 300), ("24h", 86400), ("7d", 604800), ("1w", 604800),
     (12, 12.0), (1.5, 1.5), (timedelta(minutes=2), 120.0)],
)
def test_durations_accept_every_documented_form(text: object, seconds: float) -> None:
    assert durations.to_seconds(text) == pytest.approx(seconds)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", ["", "5", "5 years", "ms", "-1s", "1.2.3s", None, [], True, -3])
def test_bad_duration_raises_value_error_naming_the_value(bad: object) -> None:
    with pytest.raises(ValueError, match=repr(bad).replace("[", r"\[").replace("]", r"\]")):
        durations.to_seconds(bad)  # type: ignore[arg-type]


@given(st.integers(min_value=0, max_value=10**6), st.sampled_from(["ms", "s", "m", "h", "d", "w"]))
def test_duration_strings_scale_by_their_unit(n: int, unit: str) -> None:
    scale = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[unit]
    assert durations.to_seconds(f"{n}{unit}") == pytest.approx(n * scale)


@given(st.text())
def test_arbitrary_text_is_either_a_duration_or_a_value_error(text: str) -> None:
    try:
        assert durations.to_seconds(text) >= 0
    except ValueError as exc:
        assert repr(text) in str(exc)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=10,
)


@given(json_values)
def test_every_value_matches_itself(value: object) -> None:
    assert matching.is_subset(value, value)


@given(st.dictionaries(st.text(max_size=3), json_values, max_size=4), st.data())
def test_any_sub_dict_of_a_payload_matches_it(payload: dict, data: st.DataObject) -> None:
    keys = data.draw(st.lists(st.sampled_from(sorted(payload)) if payload else st.nothing(),
                              unique=True))
    assert matching.is_subset({k: payload[k] for k in keys}, payload)


def test_match_is_deep_and_strict_about_types() -> None:
    payload = {"order": {"id": 7, "lines": [1, 2]}, "paid": True, "n": 1}
    assert matching.is_subset({"order": {"id": 7}}, payload)
    assert not matching.is_subset({"order": {"id": 8}}, payload)
    assert not matching.is_subset({"order": {"lines": [1]}}, payload)
    assert not matching.is_subset({"n": True}, payload)
    assert not matching.is_subset({"paid": 1}, payload)
    assert not matching.is_subset({"missing": None}, payload)


def test_callable_match_is_rejected_because_it_cannot_be_persisted() -> None:
    with pytest.raises(TypeError, match="cannot be persisted"):
        matching.validate_pattern(lambda p: True)


def test_workflow_registers_options_and_refuses_a_second_place_for_the_same_id() -> None:
    @workflow(id="basics-registry", tags=["a"], timeout="1h", concurrency=Concurrency(2))
    async def first(input: object, ctx: object) -> None:
        """Says what it does."""

    definition = definition_of("basics-registry")
    assert definition is REGISTRY.get("basics-registry")
    assert definition.timeout == 3600
    assert definition.tags == ("a",)
    assert definition.description == "Says what it does."
    assert len(definition.version) == 12
    with pytest.raises(ValueError, match="registered twice"):

        @workflow(id="basics-registry")
        async def second(input: object, ctx: object) -> None: ...


def test_workflow_rejects_sync_functions_and_bad_options() -> None:
    with pytest.raises(ValueError, match="async def"):
        workflow(id="basics-sync")(lambda i, c: None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="'forever'"):
        workflow(id="basics-timeout", timeout="forever")
    # A Schedule is checked when @workflow registers it, so the error names the workflow.
    with pytest.raises(ValueError, match=r"'basics-sched'.*exactly one"):
        workflow(id="basics-sched", schedule=Schedule(cron="* * * * *", every="1m"))
    with pytest.raises(ValueError, match=r"'basics-sched'.*cron.*'every tuesday'"):
        workflow(id="basics-sched", schedule=Schedule(cron="every tuesday"))
