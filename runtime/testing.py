"""Run workflows in-process, with no daemon: stand-in steps, supplied events, skipped time.

``await run_workflow_for_test(wf, input, ...)`` drives the real executor with an in-memory host
and a manual clock. Sleeps, retry backoffs and timeouts resolve instantly by moving the clock.
With ``replay="cold"`` every park closes the execution and the next one replays the body from the
journal, as the daemon does for a run it does not keep warm; both modes must end the same.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from runtime import errors
from runtime import explore as exploring
from runtime.clock import ManualClock
from runtime.executor import Execution
from runtime.facts import HostServices, Limits, Outcome, ProcessRunner, RunFacts
from runtime.journal import (
    CompensationRan,
    Entry,
    Journal,
    StepAttempt,
    StreamChunk,
    WaitpointRegistered,
    WaitpointResolved,
)
from runtime.matching import matches
from runtime.ratelimit import RateLimiter, TokenBucketLimiter
from runtime.status import ResolutionSource, RunStatus, WaitpointKind
from runtime.workflow import REGISTRY, Registry, WorkflowDefinition, definition_of

Replay = Literal["warm", "cold"]


class UnresolvedWaitError(LookupError):
    """The workflow waits on something the test did not supply (and ``pause_on_wait`` is off)."""

    def __init__(self, waiting_on: Sequence[WaitpointRegistered]) -> None:
        ids = ", ".join(w.wp_id for w in waiting_on)
        super().__init__(
            f"the workflow waits on {ids}, which the test did not supply; pass events=, "
            "signals=, tokens= or invokes=, or pause_on_wait=True"
        )
        self.waiting_on = tuple(waiting_on)


@dataclass
class TestResult:
    """How a test run ended. ``status`` is a ``RunStatus`` (a ``str``)."""

    __test__ = False  # not a pytest test class

    status: RunStatus
    output: Any
    error: dict[str, Any] | None
    steps: dict[str, dict[str, Any]]
    metadata: dict[str, Any]
    compensations: list[dict[str, Any]]
    streams: dict[str, list[Any]]
    invocations: list[dict[str, Any]]
    pause: dict[str, Any] | None
    journal: list[Entry] = field(repr=False)
    divergence: tuple[dict[str, Any], ...] = ()
    _session: _Session | None = field(default=None, repr=False)


@dataclass
class _Supplies:
    events: dict[str, list[Any]]
    signals: dict[str, list[Any]]
    tokens: dict[str, Any]
    invokes: dict[str, Any]

    def add(
        self,
        events: Mapping[str, Any] | None,
        signals: Mapping[str, Any] | None,
        tokens: Mapping[str, Any] | None,
        invokes: Mapping[str, Any] | None,
    ) -> None:
        for store, given in ((self.events, events), (self.signals, signals)):
            for key, value in (given or {}).items():
                store.setdefault(key, []).extend(value if isinstance(value, list) else [value])
        self.tokens.update(tokens or {})
        self.invokes.update(invokes or {})


class _Session:
    """One test run: its host, clock, journal and (warm) execution."""

    def __init__(
        self,
        definition: WorkflowDefinition,
        input: Any,
        facts: RunFacts,
        clock: ManualClock,
        host_extras: dict[str, Any],
        replay: Replay,
    ) -> None:
        self.definition = definition
        self.input = input
        self.facts = facts
        self.clock = clock
        self.replay = replay
        self.entries: list[Entry] = []
        self.invocations: list[dict[str, Any]] = []
        self.supplies = _Supplies({}, {}, {}, {})
        self.host = HostServices(record=self._record, clock=clock, **host_extras)
        self.execution = self._new_execution()

    def _new_execution(self) -> Execution:
        return Execution(
            self.definition, self.input, self.facts, Journal(self.entries), self.host
        )

    async def _record(self, entry: Entry) -> Sequence[WaitpointResolved]:
        self.entries.append(entry)
        if isinstance(entry, WaitpointRegistered) and entry.kind == WaitpointKind.RUN:
            meta = entry.meta
            self.invocations.append(
                {
                    "workflow_id": meta["workflow_id"],
                    "child_run_id": meta["child_run_id"],
                    "input": meta["input"],
                    "detach": meta["detach"],
                }
            )
        return ()

    async def drive(self, pause_on_wait: bool) -> Outcome:
        while True:
            outcome = await self.execution.advance()
            if outcome.status != RunStatus.WAITING:
                return outcome
            resolutions = await self._resolve_some(outcome.waiting_on)
            if not resolutions:
                if pause_on_wait:
                    return outcome
                raise UnresolvedWaitError(outcome.waiting_on)
            if self.replay == "cold":
                await self.execution.close()
                self.entries.extend(resolutions)
                self.execution = self._new_execution()
            else:
                for res in resolutions:
                    self.entries.append(res)
                    self.execution.resolve(res)

    async def _resolve_some(
        self, waiting: Sequence[WaitpointRegistered]
    ) -> list[WaitpointResolved]:
        """Resolve what the supplies can at the current time, else skip to the next deadline."""
        now = self.clock.now()
        found: list[WaitpointResolved] = []
        for reg in waiting:
            res = await self._supplied(reg, now)
            if res is not None:
                found.append(res)
        if found:
            return found
        deadlines = [
            (t, reg)
            for reg in waiting
            for t in (reg.due_at if reg.kind == WaitpointKind.DATETIME else reg.timeout_at,)
            if t is not None
        ]
        if not deadlines:
            return []
        due, reg = min(deadlines, key=lambda d: (d[0], d[1].wp_id))
        self.clock.skip_to(due)
        is_sleep = reg.kind == WaitpointKind.DATETIME
        source = ResolutionSource.LIVE if is_sleep else ResolutionSource.TIMEOUT
        return [WaitpointResolved(reg.wp_id, reg.kind, max(due, now), source)]

    async def _supplied(self, reg: WaitpointRegistered, now: float) -> WaitpointResolved | None:
        meta = reg.meta
        if reg.kind in (WaitpointKind.EVENT, WaitpointKind.SIGNAL):
            is_event = reg.kind == WaitpointKind.EVENT
            store = self.supplies.events if is_event else self.supplies.signals
            key = meta["event_type"] if is_event else meta["signal"]
            queue = store.get(key, [])
            for i, payload in enumerate(queue):
                if matches(meta.get("match"), payload):
                    del queue[i]
                    return WaitpointResolved(
                        reg.wp_id, reg.kind, now, ResolutionSource.LIVE, payload=payload
                    )
            return None
        if reg.kind == WaitpointKind.MANUAL:
            token_id = meta["token_id"]
            tokens = self.supplies.tokens
            if token_id not in tokens and "*" not in tokens:
                return None
            value = tokens.get(token_id, tokens.get("*"))
            payload = value(token_id) if callable(value) else value
            return WaitpointResolved(reg.wp_id, reg.kind, now, ResolutionSource.LIVE, payload)
        if reg.kind == WaitpointKind.RUN:
            return await self._child(reg, now)
        return None

    async def _child(self, reg: WaitpointRegistered, now: float) -> WaitpointResolved | None:
        meta = reg.meta
        workflow_id = meta["workflow_id"]
        record = next(i for i in self.invocations if i["child_run_id"] == meta["child_run_id"])
        payload: Any = None
        error: dict[str, Any] | None = None
        if workflow_id in self.supplies.invokes:
            supplied = self.supplies.invokes[workflow_id]
            try:
                if isinstance(supplied, BaseException):
                    raise supplied
                payload = supplied(meta["input"]) if callable(supplied) else supplied
                if inspect.isawaitable(payload):
                    payload = await payload
            except Exception as exc:
                error = errors.serialize_error(exc)
        else:
            try:
                definition = definition_of(workflow_id)
            except LookupError:
                return None
            child = await run_workflow_for_test(
                definition, meta["input"], run_id=meta["child_run_id"], now=self.clock.now()
            )
            if child.status == RunStatus.COMPLETED:
                payload = child.output
            else:
                error = child.error or errors.error_dict(
                    "CHILD_RUN_FAILED", f"child ended {child.status}"
                )
        record["output" if error is None else "error"] = payload if error is None else error
        return WaitpointResolved(
            reg.wp_id, reg.kind, now, ResolutionSource.LIVE, payload=payload, error=error
        )

    def result(self, outcome: Outcome) -> TestResult:
        journal = Journal(self.entries)
        steps: dict[str, dict[str, Any]] = {}
        streams: dict[str, list[Any]] = {}
        compensations: list[dict[str, Any]] = []
        for entry in self.entries:
            if isinstance(entry, StepAttempt):
                info = steps.setdefault(entry.step_id, {"attempts": []})
                info["attempts"].append(
                    {"attempt": entry.attempt, "status": entry.status, "error": entry.error}
                )
                info.update(
                    status=entry.status,
                    output=entry.output,
                    error=entry.error,
                    attempt=entry.attempt,
                )
            elif isinstance(entry, StreamChunk) and not entry.final:
                streams.setdefault(entry.stream_id, []).append(entry.chunk)
            elif isinstance(entry, CompensationRan):
                compensations.append(
                    {"step_id": entry.step_id, "status": entry.status, "error": entry.error}
                )
        waiting = outcome.status == RunStatus.WAITING
        return TestResult(
            status=outcome.status,
            output=outcome.output,
            error=outcome.error,
            steps=steps,
            metadata=dict(journal.metadata),
            compensations=compensations,
            streams=streams,
            invocations=[dict(i) for i in self.invocations],
            pause=(
                {"waiting_on": [{"id": w.wp_id, "kind": str(w.kind)} for w in outcome.waiting_on]}
                if waiting
                else None
            ),
            journal=list(self.entries),
            divergence=outcome.divergence,
            _session=self if waiting else None,
        )


def _as_fn(value: Any) -> Callable[..., Any]:
    if callable(value):
        return value  # type: ignore[no-any-return]  # callable() narrows to a bare Callable

    async def constant(*_: Any) -> Any:
        return value

    return constant


async def run_workflow_for_test(
    wf: Any,
    input: Any = None,
    *,
    run_id: str | None = None,
    steps: Mapping[str, Any] | None = None,
    events: Mapping[str, Any] | None = None,
    signals: Mapping[str, Any] | None = None,
    tokens: Mapping[str, Any] | None = None,
    invokes: Mapping[str, Any] | None = None,
    now: datetime | float | None = None,
    pause_on_wait: bool = False,
    replay: Replay = "warm",
    journal: Sequence[Entry] = (),
    rate_limiter: RateLimiter | None = None,
    process_runner: ProcessRunner | None = None,
    limits: Limits | None = None,
) -> TestResult:
    """Run ``wf`` to its end (or first unsupplied wait with ``pause_on_wait``) in-process.

    ``steps`` maps step ids to stand-in callables (or plain values to return); ``events`` and
    ``signals`` map a type/name to a payload or a list of payloads delivered in order; ``tokens``
    maps token ids (or ``"*"``) to payloads; ``invokes`` maps child workflow ids to an output, a
    callable of the child input, or an exception; unlisted registered children run for real.
    """
    definition = definition_of(wf)
    if isinstance(now, datetime):
        start = now.timestamp()
    elif now is None:
        start = 1_700_000_000.0
    else:
        start = float(now)
    clock = ManualClock(start)
    facts = RunFacts(
        run_id=run_id or "test-run",
        workflow_id=definition.id,
        workflow_version=definition.version,
        started_at=start,
    )
    extras: dict[str, Any] = {
        "rate_limiter": rate_limiter or TokenBucketLimiter(clock),
        "process_runner": process_runner,
        "limits": limits or Limits(),
        "overrides": {k: _as_fn(v) for k, v in (steps or {}).items()},
    }
    session = _Session(definition, input, facts, clock, extras, replay)
    session.entries.extend(journal)
    if journal:
        session.execution = session._new_execution()
    session.supplies.add(events, signals, tokens, invokes)
    return session.result(await session.drive(pause_on_wait))


async def resume_workflow_for_test(
    result: TestResult,
    *,
    events: Mapping[str, Any] | None = None,
    signals: Mapping[str, Any] | None = None,
    tokens: Mapping[str, Any] | None = None,
    invokes: Mapping[str, Any] | None = None,
    pause_on_wait: bool = False,
) -> TestResult:
    """Continue a run that ``pause_on_wait`` left ``waiting``, with more supplies."""
    session = result._session
    if session is None:
        raise ValueError(f"this run is {result.status}, not waiting: there is nothing to resume")
    session.supplies.add(events, signals, tokens, invokes)
    return session.result(await session.drive(pause_on_wait))


async def replay_check(
    paths: Sequence[str | Path] | str | Path,
    *,
    registry: Registry | None = None,
) -> list[dict[str, Any]]:
    """Replay exported runs (``wf export`` files) against the workflow code registered now,
    as ``wf replay --check`` does; return one result per run. Raises ``AssertionError``
    naming every run that diverged (with the entry where it did) or whose workflow is not
    registered, so a test of a workflow change is one line::

        await replay_check(["tests/fixtures/order-runs.json"])
    """
    from runtime import journal_file, replaycheck  # the check pulls in the executor only here

    files = [paths] if isinstance(paths, str | Path) else list(paths)
    runs = [run for path in files for run in journal_file.load(path)]
    results = await replaycheck.check_all(runs, registry if registry is not None else REGISTRY)
    bad = [r for r in results if r["result"] != "ok"]
    if bad:
        lines = [
            f"{r['run_id']} ({r['workflow_id']}): "
            + (f"diverged at {r['entry']}" if r["result"] == "diverged" else r["message"])
            for r in bad
        ]
        raise AssertionError(f"{len(bad)} of {len(results)} runs do not replay:\n"
                             + "\n".join(lines))
    return results


ExploreFailure = exploring.ExploreFailure
ExploreReport = exploring.ExploreReport


async def explore(wf: Any, input: Any = None, **options: Any) -> exploring.ExploreReport:
    """Deterministic simulation of ``wf`` (SPEC §14): per seed, injected step failures (per
    each step's retry policy), permuted event and signal arrival, skewed timers, and crashes at
    random journal boundaries whose replays must reproduce the live journal and output, with
    each compensation run once in reverse order. ``seeds=100`` (a count, or the seeds to run);
    ``steps``/``events``/``signals``/``tokens``/``invokes`` as for ``run_workflow_for_test``;
    ``failure_rate``, ``crashes``, ``max_skew``. Raises :class:`ExploreFailure` (an
    ``AssertionError``) naming the seed that fails, which ``seeds=[seed]`` reproduces."""
    return await exploring.explore(wf, input, live=_seeded_run, **options)


class _SeededSession(_Session):
    """The harness's session with a seed's arrival order and timer skew (``explore``)."""

    def __init__(self, plan: exploring.SeedPlan, clock: ManualClock,
                 extras: dict[str, Any]) -> None:
        super().__init__(plan.definition, plan.input, plan.facts, clock, extras, plan.replay)
        self.rng = plan.rng
        self.max_skew = plan.max_skew

    async def _resolve_some(
        self, waiting: Sequence[WaitpointRegistered]
    ) -> list[WaitpointResolved]:
        now = self.clock.now()
        order = list(waiting)
        self.rng.shuffle(order)
        found: list[WaitpointResolved] = []
        for reg in order:
            res = await self._supplied(reg, now)
            if res is not None:
                found.append(res)
        if found:
            return found[: self.rng.randint(1, len(found))]
        deadlines = [
            (t, reg)
            for reg in waiting
            for t in (reg.due_at if reg.kind == WaitpointKind.DATETIME else reg.timeout_at,)
            if t is not None
        ]
        if not deadlines:
            return []
        due, reg = min(deadlines, key=lambda d: (d[0], d[1].wp_id))
        fired = max(due, now) + self.rng.uniform(0.0, self.max_skew)
        self.clock.skip_to(fired)
        source = (ResolutionSource.LIVE if reg.kind == WaitpointKind.DATETIME
                  else ResolutionSource.TIMEOUT)
        return [WaitpointResolved(reg.wp_id, reg.kind, fired, source)]


async def _seeded_run(plan: exploring.SeedPlan) -> tuple[Outcome, list[Entry]]:
    """One seed's live run (``explore``): the plan's supplies, injector and resume mode."""
    clock = ManualClock(plan.facts.started_at)
    extras: dict[str, Any] = {
        "rate_limiter": TokenBucketLimiter(clock),
        "limits": Limits(),
        "overrides": {k: _as_fn(v) for k, v in plan.steps.items()},
        "inject_failure": plan.inject,
    }
    session = _SeededSession(plan, clock, extras)
    session.supplies.add(plan.events, plan.signals, plan.tokens, plan.invokes)
    outcome = await session.drive(pause_on_wait=True)
    if outcome.status == RunStatus.WAITING:
        await session.execution.close()
    return outcome, list(session.entries)
