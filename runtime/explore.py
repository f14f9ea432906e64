"""``testing.explore``: deterministic simulation of one workflow for its author (SPEC §14).

For each seed, the workflow runs live in the test harness with the seed's choices:

- injected step failures: an attempt that its retry policy would follow with another one may
  fail with a ``RetryableError`` before its function is called (never the last one, so the
  run's end is the workflow's own);
- permuted arrival: the supplied events and signals of each type/name arrive in a shuffled
  order, and when several waits could be resolved at once a random subset goes first;
- skewed timers: a sleep, backoff or timeout fires up to ``max_skew`` seconds late;
- cold or warm resumes (every park replays the body from the journal, or not);
- Python's global ``random`` seeded differently for the live run and each replay (a body that
  draws from it outside a step is caught, reproducibly).

Then the run is crashed at random journal boundaries (and at its end): for each boundary the
body replays the journal up to it in a fresh execution and goes on live from there, its steps
answering what the live run recorded for them and its waits the recorded resolutions. Each
continuation must record exactly the entries the live run recorded after the boundary (as a
multiset between two parks: parallel branches may interleave) and end the same way, and the
live run must have run each compensation once, in reverse order. A failure raises
:class:`ExploreFailure` naming the seed; ``explore(wf, input, seeds=[seed])`` reproduces it.
"""

from __future__ import annotations

import contextlib
import random
import zlib
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from runtime import errors
from runtime.clock import ManualClock
from runtime.executor import Execution
from runtime.facts import HostServices, Outcome, RunFacts
from runtime.journal import (
    CompensationRan,
    Entry,
    Journal,
    MetadataOp,
    StepAttempt,
    StreamChunk,
    WaitpointRegistered,
    WaitpointResolved,
)
from runtime.ratelimit import TokenBucketLimiter
from runtime.retry import RetryPolicy
from runtime.status import RunStatus
from runtime.steps import current_step
from runtime.workflow import WorkflowDefinition, definition_of

DEFAULT_START = 1_700_000_000.0

Replay = Literal["warm", "cold"]


@dataclass(frozen=True)
class SeedPlan:
    """What the live run of one seed gets: the seed's random source (arrival order, skew),
    its replay mode, the failure injector and the supplies (events and signals shuffled)."""

    definition: WorkflowDefinition
    input: Any
    facts: RunFacts
    rng: random.Random
    replay: Replay
    inject: Callable[[str, int, RetryPolicy], BaseException | None]
    steps: Mapping[str, Any]
    events: Mapping[str, Any]
    signals: Mapping[str, Any]
    tokens: Mapping[str, Any]
    invokes: Mapping[str, Any]
    max_skew: float


LiveRun = Callable[[SeedPlan], Awaitable[tuple[Outcome, Sequence[Entry]]]]
"""Runs a seed's plan live in the test harness (``runtime.testing`` provides it): how the run
ended and its journal."""


class ExploreFailure(AssertionError):
    """A seed whose run does not replay the way it ran (or ran a compensation twice or out of
    order). ``seed`` reproduces it: ``explore(wf, input, seeds=[seed])``."""

    def __init__(self, workflow_id: str, seed: int, problem: str, trace: Sequence[Entry]) -> None:
        lines = "\n".join(f"  {n:>3} {_describe(e)}" for n, e in enumerate(trace, start=1))
        super().__init__(
            f"explore({workflow_id}) seed {seed}: {problem}\n"
            f"reproduce with: explore(wf, input, seeds=[{seed}])\n"
            f"the live run's journal:\n{lines}"
        )
        self.workflow_id = workflow_id
        self.seed = seed
        self.problem = problem
        self.trace = tuple(trace)


@dataclass(frozen=True)
class SeedRun:
    """What one seed did: how the live run ended, its journal, where it was crashed, which
    attempts failed by injection, and whether its parks were cold."""

    seed: int
    status: RunStatus
    output: Any
    error: dict[str, Any] | None
    journal: tuple[Entry, ...] = field(repr=False)
    crashes: tuple[int, ...]
    injected: tuple[tuple[str, int], ...]
    replay: Replay


@dataclass(frozen=True)
class ExploreReport:
    workflow_id: str
    runs: tuple[SeedRun, ...]

    @property
    def seeds(self) -> tuple[int, ...]:
        return tuple(r.seed for r in self.runs)

    def statuses(self) -> dict[str, int]:
        """How many seeds ended in each status."""
        out: dict[str, int] = {}
        for r in self.runs:
            out[str(r.status)] = out.get(str(r.status), 0) + 1
        return out


async def explore(
    wf: Any,
    input: Any = None,
    *,
    seeds: int | Iterable[int] = 100,
    steps: Mapping[str, Any] | None = None,
    events: Mapping[str, Any] | None = None,
    signals: Mapping[str, Any] | None = None,
    tokens: Mapping[str, Any] | None = None,
    invokes: Mapping[str, Any] | None = None,
    run_id: str | None = None,
    now: float | None = None,
    failure_rate: float = 0.3,
    crashes: int = 4,
    max_skew: float = 5.0,
    live: LiveRun,
) -> ExploreReport:
    """Explore ``wf`` with ``input`` under each seed (``seeds``: how many, from 0, or which);
    ``steps``/``events``/``signals``/``tokens``/``invokes`` as for ``run_workflow_for_test``.
    Returns what each seed did; raises :class:`ExploreFailure` at the first seed that fails."""
    definition = definition_of(wf)
    if not 0.0 <= failure_rate <= 1.0:
        raise ValueError(f"failure_rate must be within [0, 1], got {failure_rate!r}")
    if crashes < 0 or max_skew < 0:
        raise ValueError("crashes and max_skew must not be negative")
    chosen = range(seeds) if isinstance(seeds, int) else list(seeds)
    runs = []
    for seed in chosen:
        runs.append(await _one_seed(
            definition, input, seed, steps=steps or {}, events=events or {},
            signals=signals or {}, tokens=tokens or {}, invokes=invokes or {},
            run_id=run_id or "test-run", start=DEFAULT_START if now is None else float(now),
            failure_rate=failure_rate, crashes=crashes, max_skew=max_skew, live=live,
        ))
    return ExploreReport(definition.id, tuple(runs))


# --- the live run ------------------------------------------------------------------------------


def _injector(
    seed: int, rate: float, injected: list[tuple[str, int]]
) -> Any:
    def inject(step_id: str, attempt: int, policy: RetryPolicy) -> BaseException | None:
        if attempt >= policy.max:
            return None  # the last attempt is the step's own: the run ends its own way
        draw = random.Random(zlib.crc32(f"{seed}:{step_id}:{attempt}".encode())).random()
        if draw >= rate:
            return None
        injected.append((step_id, attempt))
        return errors.RetryableError(f"injected by explore (seed {seed})", code="INJECTED")

    return inject


async def _one_seed(
    definition: WorkflowDefinition, input: Any, seed: int, *, steps: Mapping[str, Any],
    events: Mapping[str, Any], signals: Mapping[str, Any], tokens: Mapping[str, Any],
    invokes: Mapping[str, Any], run_id: str, start: float, failure_rate: float, crashes: int,
    max_skew: float, live: LiveRun,
) -> SeedRun:
    rng = random.Random(seed)
    replay: Replay = rng.choice(("warm", "cold"))
    facts = RunFacts(run_id=run_id, workflow_id=definition.id,
                     workflow_version=definition.version, started_at=start)
    injected: list[tuple[str, int]] = []
    plan = SeedPlan(definition, input, facts, rng, replay,
                    _injector(seed, failure_rate, injected), steps, _shuffled(events, rng),
                    _shuffled(signals, rng), tokens, invokes, max_skew)
    with _global_random(f"{seed}:live"):
        outcome, journal = await live(plan)
    live_entries = tuple(journal)

    def fail(problem: str) -> ExploreFailure:
        return ExploreFailure(definition.id, seed, problem, live_entries)

    if outcome.divergence:
        raise fail(f"the live run reported a divergence: {list(outcome.divergence)}")
    problem = _compensation_problem(live_entries)
    if problem:
        raise fail(problem)
    n = len(live_entries)
    candidates = _boundaries(live_entries)
    boundaries = sorted({*rng.sample(candidates, min(crashes, len(candidates))), n})
    for k in boundaries:
        with _global_random(f"{seed}:crash:{k}"):
            problem = await _continue_after_crash(definition, input, facts, live_entries, k,
                                                  outcome)
        if problem:
            raise fail(f"crash after entry {k} of {n}: {problem}")
    return SeedRun(seed, outcome.status, outcome.output, outcome.error, live_entries,
                   tuple(boundaries), tuple(injected), replay)


def _boundaries(live: Sequence[Entry]) -> list[int]:
    """Where a crash may fall: after any entry, except between resolutions the live run
    delivered together at one park (a crash there would be a run that received fewer of them,
    which went on differently by right)."""
    return [k for k in range(len(live) + 1)
            if not (0 < k < len(live) and isinstance(live[k - 1], WaitpointResolved)
                    and isinstance(live[k], WaitpointResolved))]


@contextlib.contextmanager
def _global_random(key: str) -> Iterator[None]:
    """Seed Python's global ``random`` for one body execution (and restore it after): a body
    that draws from it outside a step takes another path on replay, and the seed names which
    draws, so the failure reproduces."""
    state = random.getstate()
    random.seed(zlib.crc32(key.encode()))
    try:
        yield
    finally:
        random.setstate(state)


def _shuffled(supplies: Mapping[str, Any], rng: random.Random) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in sorted(supplies):
        value = supplies[key]
        items = list(value) if isinstance(value, list) else [value]
        rng.shuffle(items)
        out[key] = items
    return out


def _compensation_problem(live: Sequence[Entry]) -> str | None:
    ran = [e.step_id for e in live if isinstance(e, CompensationRan)]
    twice = sorted({s for s in ran if ran.count(s) > 1})
    if twice:
        return f"compensations ran more than once: {twice}"
    done = [e.step_id for e in live if isinstance(e, StepAttempt) and e.status == "ok"]
    expected = [s for s in reversed(done) if s in set(ran)]
    if ran != expected:
        return f"compensations ran in the order {ran}, not in reverse ({expected})"
    return None


# --- crash and continue --------------------------------------------------------------------------


class _Recorded(Mapping[str, Any]):
    """Step stand-ins answering what the live run recorded for each attempt."""

    def __init__(self, live: Sequence[Entry], problems: list[str]) -> None:
        self._attempts = {(e.step_id, e.attempt): e for e in live if isinstance(e, StepAttempt)}
        self._problems = problems

    def get(self, step_id: str, default: Any = None) -> Any:
        return self._answer

    async def _answer(self, *args: Any, **kwargs: Any) -> Any:
        step = current_step()
        rec = self._attempts.get((step.step_id, step.attempt))
        if rec is None:
            problem = f"attempt {step.attempt} of step {step.step_id!r} never ran live"
            self._problems.append(problem)
            raise errors.FatalError(problem, code="EXPLORE_UNKNOWN_ATTEMPT")
        if rec.status == "ok":
            return rec.output
        raise errors.deserialize_error(rec.error or {})

    def __getitem__(self, step_id: str) -> Any:
        return self._answer

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


async def _continue_after_crash(
    definition: WorkflowDefinition, input: Any, facts: RunFacts, live: Sequence[Entry], k: int,
    ended: Outcome,
) -> str | None:
    """Replay ``live[:k]`` in a fresh execution and go on; a description of the first way the
    continuation differs from the live run, or None."""
    problems: list[str] = []
    produced: list[Entry] = []

    async def record(entry: Entry) -> Sequence[WaitpointResolved]:
        produced.append(entry)
        return ()

    clock = ManualClock(_time_at(live, k, facts.started_at))
    host = HostServices(record=record, clock=clock, rate_limiter=TokenBucketLimiter(clock),
                        overrides=_Recorded(live, problems))
    entries = list(live[:k])
    execution = Execution(definition, input, facts, Journal(entries), host)
    pos = k
    try:
        while True:
            outcome = await execution.advance()
            segment, produced[:] = list(produced), []
            expected = list(live[pos:pos + len(segment)])
            if problems:
                return problems[0]
            if _canonical(segment) != _canonical(expected):
                return _first_difference(segment, expected, pos)
            pos += len(segment)
            if outcome.divergence:
                return f"the replay diverged: {list(outcome.divergence)}"
            if outcome.status != RunStatus.WAITING:
                break
            resolutions: list[WaitpointResolved] = []
            while pos < len(live):
                entry = live[pos]
                if not isinstance(entry, WaitpointResolved):
                    break
                resolutions.append(entry)
                pos += 1
            if not resolutions:
                if pos < len(live):
                    return (f"parked on {[w.wp_id for w in outcome.waiting_on]} where the live "
                            f"run went on with entry {pos + 1}: {_describe(live[pos])}")
                break
            for res in resolutions:
                execution.resolve(res)
    finally:
        await execution.close()
    if pos != len(live):
        return f"ended after entry {pos} of {len(live)}: {_describe(live[pos])} never came"
    if outcome.status != ended.status:
        return f"ended {outcome.status}, the live run {ended.status}"
    if outcome.status == RunStatus.WAITING:
        return None
    if _json(outcome.output) != _json(ended.output):
        return f"returned {outcome.output!r}, the live run {ended.output!r}"
    if _error_key(outcome.error) != _error_key(ended.error):
        return f"raised {outcome.error!r}, the live run {ended.error!r}"
    return None


def _time_at(live: Sequence[Entry], k: int, start: float) -> float:
    """The host's clock when the live run had recorded ``live[:k]``."""
    latest = start
    for entry in live[:k]:
        for name in ("finished_at", "resolved_at", "registered_at", "at"):
            value = getattr(entry, name, None)
            if isinstance(value, int | float):
                latest = max(latest, float(value))
    return latest


# Times differ between a live run and its continuation (the host clock is not replayed):
# entries are compared without them.
_TIMES = frozenset({"started_at", "finished_at", "registered_at", "resolved_at", "due_at",
                    "timeout_at", "retry_at", "at"})


def _normal(entry: Entry) -> dict[str, Any]:
    out: dict[str, Any] = {"type": type(entry).__name__}
    for name in type(entry).__slots__:  # every entry class is a slotted dataclass
        if name in _TIMES:
            continue
        value = getattr(entry, name)
        if name == "error" and isinstance(value, dict):
            value = _error_key(value)
        out[name] = value
    if isinstance(entry, StepAttempt):
        out["retried"] = entry.retry_at is not None
    return out


def _error_key(error: dict[str, Any] | None) -> Any:
    if error is None:
        return None
    return [error.get("code"), error.get("name"), error.get("message")]


def _json(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS, default=repr)


def _canonical(entries: Sequence[Entry]) -> list[bytes]:
    return sorted(_json(_normal(e)) for e in entries)


def _first_difference(got: Sequence[Entry], expected: Sequence[Entry], pos: int) -> str:
    want = [_json(_normal(e)) for e in expected]
    have = [_json(_normal(e)) for e in got]
    for n, entry in enumerate(got):
        if have[n] not in want:
            exp = (f"the live run's entry {pos + n + 1}: {_describe(expected[n])}"
                   if n < len(expected) else "no entry (the live run had parked or ended)")
            return f"recorded {_describe(entry)}; expected {exp}"
    missing = [expected[n] for n, w in enumerate(want) if w not in have]
    return f"never recorded {_describe(missing[0])}" if missing else "entries differ"


def _describe(entry: Entry) -> str:
    if isinstance(entry, StepAttempt):
        result = (f"-> {entry.output!r}" if entry.status == "ok"
                  else f"failed {_error_key(entry.error)}"
                  + (" (retried)" if entry.retry_at is not None else ""))
        return f"step {entry.step_id} attempt {entry.attempt} {result}"
    if isinstance(entry, WaitpointRegistered):
        return f"wait {entry.wp_id} ({entry.kind})"
    if isinstance(entry, WaitpointResolved):
        return f"resolved {entry.wp_id} ({entry.source}) -> {entry.payload!r}"
    if isinstance(entry, CompensationRan):
        return f"compensation {entry.step_id} {entry.status}"
    if isinstance(entry, MetadataOp):
        return f"metadata {entry.op} {entry.key}={entry.value!r}"
    if isinstance(entry, StreamChunk):
        return f"stream {entry.stream_id}#{entry.seq}"
    return repr(entry)
