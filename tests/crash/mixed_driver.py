"""Seeded mixed-workload process-crash driver (issue 10, item 1).

One round: a real daemon, a seeded batch of ``mix-plan`` runs (see ``mixed_workflows.py``)
submitted in waves, events/signals/tokens delivered as runs park, and ``kill -9`` at seeded
moments of three kinds: a plain kill at a random time, a kill inside a commit batch
(``WF_CRASH_AT=batch.begun|batch.executed:<n>`` for that incarnation) and a kill during start-up
recovery (the restart is armed with ``recovery.scan:<n>,timers.armed:1`` so it dies before
``daemon.ready``). After the last kill: a clean restart, the rest of the work, a drain, then the
checks of SPEC §10. ``random.Random(seed)`` draws everything, so a seed replays its schedule
(the moments of the random kills are wall-clock delays, so what they hit can still vary).

Every violation is a line starting ``seed=<seed>``; replay with
``WF_MIXED_REPLAY=<seed> WF_MIXED_RUNS=<runs> .venv/bin/pytest -q
tests/crash/test_mixed_crashes.py -k replay``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import re
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from orchestrator.client import Client, DaemonUnreachable, RemoteError
from runtime import RunStatus
from runtime.schedules import run_id as tick_run_id
from runtime.testing import run_workflow_for_test
from tests.crash import mixed_trigger_names as mt
from tests.crash import mixed_workflows as mw
from tests.crash.daemon_process import DaemonProcess

ROOT = Path(__file__).resolve().parents[2]
TERMINAL = {str(s) for s in RunStatus if s.is_terminal}
LOST = (DaemonUnreachable, ConnectionError, OSError)
LATE = 5.0  # generous bound on "a timer due while down fires at start"
DRAIN_GRACE = 5.0  # a run must end this long after the driver's last send (plus its sleeps)
SUBMITTERS = 8
BIG = 1_000_000
POLL = 0.03  # how often the driver looks for parked runs to deliver to


@dataclass
class Incarnation:
    number: int
    started_at: float
    ready_at: float | None = None
    ended_at: float | None = None
    end: str = "running"  # random | batch | recovery | clean


@dataclass
class Request:
    kind: str  # submit | event | signal | token
    target: str
    incarnation: int
    state: str = "sent"  # acked | indeterminate | refused
    detail: str = ""


@dataclass
class RoundReport:
    seed: int
    runs: int = 0
    kills: Counter[str] = field(default_factory=Counter)
    acked: int = 0
    indeterminate: int = 0
    deliveries: int = 0
    ledger_lines: int = 0
    timers_due_while_down: int = 0
    triggered: int = 0  # mix-plan runs started by an event instead of a submit
    batch_events: int = 0  # distinct mix.batch event ids sent
    ticks: int = 0  # runs of the mix-tick schedule
    missed: int = 0  # its fires collapsed (counted missed)
    drain_seconds: float = 0.0
    seconds: float = 0.0
    violations: list[str] = field(default_factory=list)

    def line(self) -> str:
        kills = " ".join(f"{k}={v}" for k, v in sorted(self.kills.items())) or "none"
        return (f"seed={self.seed} runs={self.runs} acked={self.acked} "
                f"indeterminate={self.indeterminate} deliveries={self.deliveries} kills[{kills}] "
                f"ledger={self.ledger_lines} timers_down={self.timers_due_while_down} "
                f"triggered={self.triggered} batched={self.batch_events} ticks={self.ticks} "
                f"missed={self.missed} "
                f"drain={self.drain_seconds:.1f}s time={self.seconds:.1f}s "
                f"violations={len(self.violations)}")


# ---------------------------------------------------------------------------- the workload

def make_plan(rng: random.Random, scale: float = 1.0, child: bool = False) -> list[mw.Op]:
    """A seeded plan; ``scale`` shrinks sleeps and backoffs (CI)."""
    ops: list[mw.Op] = []
    weights = {"step": 30, "sleep": 14, "event": 10, "signal": 10, "token": 8, "retry": 10,
               "child": 0 if child else 8}
    for _ in range(rng.randint(2, 4 if child else 6)):
        kind = rng.choices(list(weights), list(weights.values()))[0]
        if kind == "sleep":
            # Some sleeps are long enough to come due while the daemon is down.
            long = rng.random() < 0.3
            seconds = rng.uniform(0.8, 2.0) if long else rng.uniform(0.05, 0.4)
            ops.append(["sleep", round(seconds * scale, 3)])
        elif kind == "retry":
            ops.append(["retry", rng.randint(1, 2), round(rng.uniform(0.1, 0.5) * scale, 3)])
        elif kind == "child":
            ops.append(["child", make_plan(rng, scale, child=True)])
        else:
            ops.append([kind])
    if not child and rng.random() < 0.12:
        ops.append(["fatal"])  # compensates the ledger steps before it
    return ops


def plan_seconds(plan: list[mw.Op]) -> float:
    """Time a plan spends sleeping and backing off (the drain bound adds it)."""
    total = 0.0
    for op in plan:
        if op[0] == "sleep":
            total += op[1]
        elif op[0] == "retry":
            total += op[1] * op[2]
        elif op[0] == "child":
            total += plan_seconds(op[1])
    return total


def children_of(run_id: str, key: str, plan: list[mw.Op]) -> dict[str, dict[str, Any]]:
    """Child run ids (as ctx.invoke derives them) with their inputs."""
    out: dict[str, dict[str, Any]] = {}
    n = 0
    for i, op in enumerate(plan):
        if op[0] == "child":
            out[f"{run_id}-{mw.CHILD}-{n}"] = {"key": f"{key}.c{i}", "plan": op[1]}
            n += 1
    return out


async def reference(wf: Any, run_id: str, input: dict[str, Any]) -> Any:
    """How the same input ends in ``runtime.testing``, supplied what the driver delivers."""
    key, plan = input["key"], input["plan"]
    events = [mw.event_payload(mw.event_match(key, i)) for i, op in enumerate(plan)
              if op[0] == "event"]
    signals = [mw.signal_payload(mw.event_match(key, i)) for i, op in enumerate(plan)
               if op[0] == "signal"]
    tokens = {mw.token_id(key, i): mw.token_payload(mw.token_id(key, i))
              for i, op in enumerate(plan) if op[0] == "token"}
    kids = children_of(run_id, key, plan)

    async def child(child_input: dict[str, Any]) -> Any:
        [child_id] = [c for c, inp in kids.items() if inp == child_input]
        result = await reference(mw.mix_child, child_id, child_input)
        if result.status != RunStatus.COMPLETED:
            raise AssertionError(f"reference child {child_id} ended {result.status}")
        return result.output

    return await run_workflow_for_test(
        wf, input, run_id=run_id, events={mw.EVENT_TYPE: events},
        signals={mw.SIGNAL: signals}, tokens=tokens, invokes={mw.CHILD: child})


def ledger_rows(path: Path) -> list[tuple[str, str, int, int]]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        run_id, key, attempt, inc = line.split()[:4]
        rows.append((run_id, key, int(attempt), int(inc)))
    return rows


# ---------------------------------------------------------------------------- the round

class MixedRound:
    # Triggered and scheduled workflows in the mix (``mixed_triggers``, issue 17).
    TRIGGERS = True

    def __init__(self, workdir: Path, seed: int, runs: int,
                 env: dict[str, str] | None = None, max_kills: int = 3,
                 scale: float = 1.0) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.ledger = workdir / "ledger.txt"
        self.daemon = DaemonProcess(
            workdir, modules=["tests.crash.mixed_workflows",
                              *(["tests.crash.mixed_triggers"] if self.TRIGGERS else [])],
            paths=[ROOT],
            # Kills during recovery count as recoveries without progress: keep the
            # RECOVERY_LIMIT out of the way so every run ends as the reference says.
            extra="max_recoveries = 1000",
            env={mw.LEDGER_ENV: str(self.ledger), **(env or {})})
        self.report = RoundReport(seed, runs)
        self.inputs: dict[str, dict[str, Any]] = {}
        self.limited: set[str] = set()  # runs of the flow-controlled twin workflow
        # Trigger draws come from their own generator: a seed keeps its kills and plans.
        trig_rng = random.Random(seed * 1_000_003 + 17)
        self.triggered: dict[str, str] = {}  # run id -> the mix.start event id that starts it
        for i in range(runs):
            key = f"k{i}"
            run_id = f"s{seed}-r{i}"
            if self.TRIGGERS and trig_rng.random() < 0.15:
                run_id = mt.triggered_run_id(f"s{seed}-r{i}")
                self.triggered[run_id] = f"s{seed}-r{i}"
            self.inputs[run_id] = {"key": key, "plan": make_plan(self.rng, scale)}
            if self.rng.random() < 0.3 and run_id not in self.triggered:
                self.inputs[run_id]["group"] = f"g{i % 3}"
                self.limited.add(run_id)
        self.children: dict[str, dict[str, Any]] = {}
        self.parent_of: dict[str, str] = {}
        for run_id, inp in self.inputs.items():
            for child_id, child_input in children_of(run_id, inp["key"], inp["plan"]).items():
                self.children[child_id] = child_input
                self.parent_of[child_id] = run_id
        self.kill_plan = self._kill_plan(max_kills)
        todo = list(self.inputs)
        cut = sorted(self.rng.sample(range(1, runs), min(len(self.kill_plan), runs - 1)))
        self.waves = [todo[a:b] for a, b in zip([0, *cut], [*cut, runs], strict=True)]
        batch_ids = [f"s{seed}-b{j}" for j in range(runs // 5 if self.TRIGGERS else 0)]
        n = len(self.waves)
        self.batch_waves = [batch_ids[k * len(batch_ids) // n:(k + 1) * len(batch_ids) // n]
                            for k in range(n)]
        self.batch_sends: dict[str, Request] = {}  # mix.batch event id -> its last send
        self.last_batch_send = 0.0
        self.tick_schedule: dict[str, Any] = {}
        self.ticks_paused_at = float("inf")
        self.submits: dict[str, Request] = {}
        self.deliveries: dict[tuple[str, ...], Request] = {}
        self.incs: list[Incarnation] = []
        self.last_send = 0.0
        self.acks_left = 0  # a progress-triggered kill fires when this reaches 0
        self.acked_enough = asyncio.Event()

    def _kill_plan(self, max_kills: int) -> list[dict[str, Any]]:
        plan = []
        for _ in range(self.rng.randint(1, max_kills)):
            kill: dict[str, Any] = {"delay": round(self.rng.uniform(0.05, 1.0), 3)}
            if self.rng.random() < 0.4:
                # Kill right after the k-th acknowledged submission of the wave: the moment
                # an acknowledgement sent before its commit would be lost.
                kill["after_acks"] = self.rng.randint(1, 30)
            if self.rng.random() < 0.5:
                point = self.rng.choice(["batch.begun", "batch.executed"])
                kill["crash_at"] = f"{point}:{self.rng.randint(2, 120)}"
            # The restart after this kill dies during start-up recovery.
            if self.rng.random() < 0.4:
                kill["recovery_crash"] = f"recovery.scan:{self.rng.randint(1, 6)},timers.armed:1"
            plan.append(kill)
        return plan

    def violation(self, msg: str) -> None:
        self.report.violations.append(f"seed={self.seed} {msg}")

    # ---------------------------------------------------------------- incarnations

    def start(self, crash_at: str | None = None) -> bool:
        """Start an incarnation; False if it died before ``daemon.ready`` (a start-up kill)."""
        inc = Incarnation(self.daemon.incarnation + 1, time.time())
        self.incs.append(inc)
        try:
            self.daemon.start({"WF_CRASH_AT": crash_at} if crash_at else None)
        except RuntimeError as exc:
            inc.ended_at = time.time()
            if "crash point" not in str(exc):
                raise
            inc.end = "batch" if "crash point batch." in str(exc) else "recovery"
            self.report.kills[inc.end] += 1
            return False
        inc.ready_at = time.time()
        return True

    def start_until_ready(self, *armed: str | None) -> str | None:
        """Start with each armed spec in turn until an incarnation is ready; return its spec."""
        specs = [a for a in armed if a]
        while True:
            spec = specs.pop(0) if specs else None
            if self.start(spec):
                return spec

    async def run(self) -> RoundReport:
        t0 = time.monotonic()
        details: dict[str, dict[str, Any]] = {}
        try:
            spec = self.start_until_ready(self.kill_plan[0].get("crash_at"))
            for n, kill in enumerate(self.kill_plan):
                await self.phase(self.waves[n], kill, armed=spec is not None,
                                 batch_wave=tuple(self.batch_waves[n]))
                nxt = self.kill_plan[n + 1] if n + 1 < len(self.kill_plan) else {}
                # The restart may be armed to die during recovery; the incarnation after it
                # carries the next kill's commit-batch crash point.
                spec = self.start_until_ready(kill.get("recovery_crash"), nxt.get("crash_at"))
            await self.final_phase(self.waves[-1])
            details = await self.collect()
        finally:
            code = self.daemon.stop()
        if code != 0:
            self.violation(f"daemon exited {code} on SIGTERM: {self.daemon.tail(5)}")
        await self.check(details)
        self.report.seconds = time.monotonic() - t0
        return self.report

    def _ended(self, how: str) -> None:
        inc = self.incs[-1]
        inc.ended_at, inc.end = time.time(), how
        self.report.kills[how] += 1

    async def phase(self, wave: list[str], kill: dict[str, Any], *, armed: bool,
                    batch_wave: tuple[str, ...] = ()) -> None:
        """Work until this incarnation dies: by a random kill, or at its armed batch point."""
        proc = self.daemon.proc
        assert proc is not None
        delay = kill["delay"]
        self.acks_left = kill.get("after_acks", 0) if not armed else 0
        self.acked_enough = asyncio.Event()
        async with Client.connect(self.daemon.socket) as c:
            work = [asyncio.ensure_future(self.submitter(c, wave)) for _ in range(SUBMITTERS)]
            work.append(asyncio.ensure_future(self.deliverer(c)))
            work.append(asyncio.ensure_future(self.batch_sender(c, batch_wave)))
            # An armed incarnation gets extra time to reach its crash point, then a plain kill.
            deadline = time.monotonic() + delay + (2.0 if armed else 0.0)
            while (time.monotonic() < deadline and proc.poll() is None
                   and not self.acked_enough.is_set()):
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.acked_enough.wait(), 0.01)
            died = proc.poll() is not None
            self.daemon.kill9()
            if died:
                err = proc.stderr.read().decode() if proc.stderr else ""
                if "crash point batch." not in err:
                    self.violation(f"daemon incarnation {len(self.incs)} died by itself: "
                                   f"{err[-500:]} {self.daemon.tail(5)}")
            self._ended("batch" if died else "random")
            for task in work:
                task.cancel()
            for task in work:
                with contextlib.suppress(*LOST, asyncio.CancelledError):
                    await task
        # Requests whose reply never came are indeterminate.
        for req in [*self.submits.values(), *self.deliveries.values(),
                    *self.batch_sends.values()]:
            if req.state == "sent":
                req.state = "indeterminate"

    async def final_phase(self, wave: list[str]) -> None:
        ready = self.incs[-1].ready_at or time.time()
        async with Client.connect(self.daemon.socket) as c:
            deliver = asyncio.ensure_future(self.deliverer(c))
            # This wave and the leftovers of earlier ones that a kill cut short.
            unsent = [r for w in self.waves for r in w if r not in self.submits]
            await asyncio.gather(*(self.submitter(c, unsent) for _ in range(SUBMITTERS)),
                                 self.batch_sender(c, [b for w in self.batch_waves for b in w]))
            if self.TRIGGERS:  # the last partial batch gets its timeout
                await asyncio.sleep(max(0.0, self.last_batch_send + mt.BATCH_TIMEOUT + 0.3
                                        - time.time()))
            slack = max(plan_seconds(i["plan"]) for i in self.inputs.values())
            await self._drain(c, ready, slack)
            if self.TRIGGERS:
                # No new ticks from here; a fire racing the pause lands within the pause.
                self.ticks_paused_at = time.time()
                await c.schedule_pause(mt.TICK)
                await asyncio.sleep(0.3)
                await self._drain(c, ready, slack)
            self.report.drain_seconds = time.time() - ready
            deliver.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await deliver

    async def _drain(self, c: Client, ready: float, slack: float) -> None:
        """Until no run is left unended, or report those left after the drain's bound."""
        while True:
            pending = [r for r in (await c.list(limit=BIG))["runs"]
                       if r["status"] not in TERMINAL]
            if not pending:
                return
            if time.time() > max(ready, self.last_send) + DRAIN_GRACE + slack:
                for r in pending:
                    detail = await c.get(r["run_id"])
                    waiting = [w["waitpoint_id"] for w in detail["waitpoints"]
                               if w["status"] == "waiting"]
                    self.violation(f"run {r['run_id']} still {r['status']} "
                                   f"{time.time() - ready:.1f}s after ready, waiting on "
                                   f"{waiting}; deliveries: {self._sent_to(r['run_id'])}")
                return
            await asyncio.sleep(POLL)

    def _sent_to(self, run_id: str) -> list[str]:
        return [f"{k}:{r.state}" for k, r in self.deliveries.items() if r.target == run_id]

    # ---------------------------------------------------------------- requests

    async def submitter(self, c: Client, wave: list[str]) -> None:
        while True:
            run_id = next((r for r in wave if r not in self.submits), None)
            if run_id is None:
                return
            req = Request("submit", run_id, len(self.incs))
            self.submits[run_id] = req
            self.last_send = time.time()
            try:
                if run_id in self.triggered:
                    reply = await c.send_event(mt.START_EVENT, self.inputs[run_id],
                                               event_id=self.triggered[run_id])
                    if reply["started"] != [run_id]:
                        self.violation(f"event {self.triggered[run_id]} started "
                                       f"{reply['started']}, not [{run_id}]")
                else:
                    workflow = mw.LIMITED if run_id in self.limited else mw.PARENT
                    await c.submit(workflow, self.inputs[run_id], run_id=run_id)
                req.state = "acked"
                self.acks_left -= 1
                if self.acks_left == 0:
                    self.acked_enough.set()
            except RemoteError as exc:
                req.state, req.detail = "refused", f"{exc.code}: {exc.message}"
            except LOST:
                req.state = "indeterminate"  # the kill took the reply
                raise

    async def batch_sender(self, c: Client, ids: Sequence[str]) -> None:
        """Send these mix.batch events one by one (a kill lands between events of a batch);
        one whose reply a kill took is sent again, so a re-sent event id is in the mix too."""
        for eid in ids:
            prev = self.batch_sends.get(eid)
            if prev is not None and prev.state != "indeterminate":
                continue
            req = self.batch_sends[eid] = Request("batch", eid, len(self.incs))
            self.last_send = self.last_batch_send = time.time()
            try:
                await c.send_event(mt.BATCH_EVENT, {"id": eid}, event_id=eid)
                req.state = "acked"
            except RemoteError as exc:
                req.state, req.detail = "refused", f"{exc.code}: {exc.message}"
            except LOST:
                req.state = "indeterminate"
                raise
            await asyncio.sleep(0.05)

    async def deliverer(self, c: Client) -> None:
        """Send what parked runs wait for (each request once per incarnation at most)."""
        seen: dict[str, float] = {}  # run id -> updated_at when last looked at
        while True:
            waiting = (await c.list(status="waiting", limit=BIG))["runs"]
            for run in waiting:
                run_id = run["run_id"]
                plan = (self.inputs.get(run_id) or self.children.get(run_id) or {}).get("plan")
                if not plan or not any(op[0] in ("event", "signal", "token") for op in plan):
                    continue  # parked on a sleep or a child: nothing to send
                if seen.get(run_id) == run["updated_at"]:
                    continue  # parked where it was when we last delivered to it
                seen[run_id] = run["updated_at"]
                detail = await c.get(run_id)
                for wp in detail["waitpoints"]:
                    if wp["status"] == "waiting":
                        await self.deliver(c, run_id, wp)
            await asyncio.sleep(POLL)

    async def deliver(self, c: Client, run_id: str, wp: dict[str, Any]) -> None:
        kind = wp["kind"]
        if kind == "EVENT":
            key: tuple[str, ...] = ("event", mw.event_id(wp["match"]))
        elif kind == "SIGNAL":
            key = ("signal", run_id, str(wp["match"]["n"]))
        elif kind == "MANUAL":
            key = ("token", wp["token_id"])
        else:
            return
        prev = self.deliveries.get(key)
        # An acknowledged delivery is never sent again: if it was lost, the run stays waiting
        # and the drain reports it.
        if prev is not None and (prev.state == "acked" or prev.incarnation == len(self.incs)):
            return
        req = Request(key[0], run_id, len(self.incs))
        self.deliveries[key] = req
        self.report.deliveries += 1
        self.last_send = time.time()
        try:
            if kind == "EVENT":
                await c.send_event(mw.EVENT_TYPE, mw.event_payload(wp["match"]),
                                   event_id=mw.event_id(wp["match"]))
            elif kind == "SIGNAL":
                await c.signal(run_id, mw.SIGNAL, mw.signal_payload(wp["match"]))
            else:
                await c.complete_token(wp["token_id"], mw.token_payload(wp["token_id"]))
            req.state = "acked"
        except RemoteError as exc:
            # TOKEN_CONFLICT after an indeterminate completion: the first one landed.
            ok = exc.code == "TOKEN_CONFLICT" and prev is not None
            req.state, req.detail = ("acked" if ok else "refused"), f"{exc.code}: {exc.message}"
            if not ok:
                self.violation(f"{key} to {run_id} refused: {req.detail}")
        except LOST:
            req.state = "indeterminate"
            raise

    # ---------------------------------------------------------------- checks

    async def collect(self) -> dict[str, dict[str, Any]]:
        details: dict[str, dict[str, Any]] = {}
        async with Client.connect(self.daemon.socket) as c:
            listed = (await c.list(limit=BIG))["runs"]
            ids = [r["run_id"] for r in listed]
            for run_id, n in Counter(ids).items():
                if n > 1:
                    self.violation(f"run {run_id} listed {n} times")
            for run_id in dict.fromkeys(ids):
                details[run_id] = await c.get(run_id)
            if self.TRIGGERS:
                self.tick_schedule = next(s for s in (await c.schedules())["schedules"]
                                          if s["name"] == mt.TICK)
        return details

    async def check(self, details: dict[str, dict[str, Any]]) -> None:
        rep = self.report
        rep.acked = sum(r.state == "acked" for r in self.submits.values())
        rep.indeterminate = sum(r.state == "indeterminate" for r in self.submits.values())
        for run_id, req in self.submits.items():
            if req.state == "acked" and run_id not in details:
                self.violation(f"acknowledged run {run_id} is gone (submitted in incarnation "
                               f"{req.incarnation})")
            if req.state == "refused":
                self.violation(f"submit of {run_id} refused: {req.detail}")
        rep.triggered = len(self.triggered)
        for run_id, detail in details.items():
            parent = self.parent_of.get(run_id)
            if detail["workflow_id"] in (mt.BATCHED, mt.TICK):
                continue  # checked by _check_batches / _check_ticks
            if run_id not in self.inputs and run_id not in self.children:
                self.violation(f"unexpected run {run_id} ({detail['workflow_id']})")
            elif parent is not None and parent not in details:
                self.violation(f"child {run_id} exists but its parent {parent} does not")
            elif run_id not in self.children and run_id not in self.submits:
                self.violation(f"run {run_id} exists but was never submitted")
        await self._check_equivalence(details)
        self._check_deliveries(details)
        self._check_ledger(details)
        self._check_timers(details)
        if self.TRIGGERS:
            self._check_batches(details)
            self._check_ticks(details)

    def _check_batches(self, details: dict[str, dict[str, Any]]) -> None:
        """Every acknowledged mix.batch event is in exactly one batch, none twice."""
        seen: Counter[str] = Counter()
        for run_id, d in details.items():
            if d["workflow_id"] != mt.BATCHED:
                continue
            ids = [e["id"] for e in d["input"]["events"]]
            seen.update(ids)
            if (d["status"], d["output"]) != ("completed", ids) or not (
                    1 <= len(ids) <= mt.BATCH_SIZE):
                self.violation(f"batch run {run_id} ended {d['status']} {d['output']} "
                               f"for events {ids}")
        self.report.batch_events = len(self.batch_sends)
        for eid, n in seen.items():
            if n > 1 or eid not in self.batch_sends:
                self.violation(f"batch event {eid} in {n} batches (sent: "
                               f"{eid in self.batch_sends})")
        for eid, req in self.batch_sends.items():
            if req.state == "refused" or (req.state == "acked" and eid not in seen):
                self.violation(f"batch event {eid} ({req.state} {req.detail}) is in no batch")

    def _check_ticks(self, details: dict[str, dict[str, Any]]) -> None:
        """One run per due time, every one completed; fires missed while down collapse (at
        most one run per downtime) and are counted; ticks keep coming while a daemon is up."""
        dues: list[float] = []
        for run_id, d in details.items():
            if d["workflow_id"] != mt.TICK:
                continue
            due = datetime.fromisoformat(run_id.split(":", 2)[2].replace("Z", "+00:00"))
            dues.append(due.timestamp())
            if tick_run_id(mt.TICK, dues[-1]) != run_id or d["status"] != "completed":
                self.violation(f"tick {run_id} ended {d['status']}")
        dues.sort()
        sched = self.tick_schedule
        self.report.ticks, self.report.missed = len(dues), sched.get("missed", 0)
        if (sched.get("fired"), sched.get("skipped")) != (len(dues), 0):
            self.violation(f"tick schedule says fired {sched.get('fired')} skipped "
                           f"{sched.get('skipped')}, but {len(dues)} tick runs exist")
        if dues:
            missing = round((dues[-1] - dues[0]) / mt.TICK_EVERY) + 1 - len(dues)
            if missing > sched.get("missed", 0):
                self.violation(f"{missing} due times between the first and last tick have "
                               f"no run, but only {sched.get('missed')} counted missed")
        for a, b in itertools.pairwise(self.incs):
            inside = [t for t in dues if (a.ended_at or 0.0) < t < b.started_at]
            if len(inside) > 1:
                self.violation(f"{len(inside)} tick runs due while no daemon ran: {inside}")
        for inc in self.incs:
            if inc.ready_at is None:
                continue
            t = inc.ready_at
            while t + LATE < min(inc.ended_at or self.ticks_paused_at, self.ticks_paused_at):
                if not any(t <= d <= t + LATE for d in dues):
                    self.violation(f"no tick due in [{t:.1f}, {t + LATE:.1f}] while "
                                   f"incarnation {inc.number} was up")
                    break
                t += LATE

    async def _check_equivalence(self, details: dict[str, dict[str, Any]]) -> None:
        for run_id, detail in details.items():
            if run_id in self.inputs:
                wf, inp = mw.mix_plan, self.inputs[run_id]
            elif run_id in self.children:
                wf, inp = mw.mix_child, self.children[run_id]
            else:
                continue
            ref = await reference(wf, run_id, inp)
            steps = [s["step_id"] for s in sorted(detail["steps"], key=lambda s: s["position"])]
            got = (detail["status"], detail["output"], steps)
            want = (str(ref.status), ref.output, list(ref.steps))
            if got != want:
                self.violation(f"run {run_id} ended {got}, runtime.testing says {want} "
                               f"(input {inp}, workflow {wf.__name__})")

    def _check_deliveries(self, details: dict[str, dict[str, Any]]) -> None:
        for key, req in self.deliveries.items():
            if req.state != "acked":
                continue
            wps = details.get(req.target, {}).get("waitpoints", [])
            resolved = [w for w in wps if w["status"] == "resolved" and _wp_key(req.target, w)
                        == key]
            if not resolved:
                self.violation(f"acknowledged {key} to {req.target} did not resolve its wait")

    def _inc_at(self, t: float) -> int | None:
        for inc in self.incs:
            if inc.started_at <= t <= (inc.ended_at or float("inf")):
                return inc.number
        return None

    def _check_ledger(self, details: dict[str, dict[str, Any]]) -> None:
        rows = ledger_rows(self.ledger)
        self.report.ledger_lines = len(rows)
        lines: dict[tuple[str, str], list[tuple[int, int]]] = defaultdict(list)
        for run_id, key, attempt, inc in rows:
            lines[(run_id, key)].append((attempt, inc))
        expected: set[tuple[str, str]] = set()
        for run_id, detail in details.items():
            for step in detail["steps"]:
                sid = step["step_id"]
                expected.add((run_id, sid))
                self._check_step(run_id, step, lines.get((run_id, sid), []))
            for comp in detail.get("compensations", []):
                key = f"{comp['step_id']}#undo"
                expected.add((run_id, key))
                committed = self._inc_at(comp["finished_at"])
                self._check_lines(run_id, key, 0, committed, lines.get((run_id, key), []))
        for run_id, key in set(lines) - expected:
            self.violation(f"ledger lines for {run_id} {key} with no recorded step: "
                           f"{lines[(run_id, key)]}")
        self._check_limits(rows)

    def _check_limits(self, rows: list[tuple[str, str, int, int]]) -> None:
        """A flow-controlled run holds its group's slot from its first ledger line to its
        last: no group may ever show more than its limit of such spans at once."""
        spans: dict[str, list[int]] = {}
        for n, (run_id, _key, _attempt, _inc) in enumerate(rows):
            if run_id in self.limited:
                spans.setdefault(run_id, [n, n])[1] = n
        by_group: dict[str, list[tuple[int, int]]] = defaultdict(list)
        for run_id, (first, last) in spans.items():
            by_group[self.inputs[run_id]["group"]].append((first, last))
        for group, group_spans in by_group.items():
            edges = sorted([(a, 1) for a, _ in group_spans] + [(b, -1) for _, b in group_spans],
                           key=lambda e: (e[0], -e[1]))
            held = peak = 0
            for _, change in edges:
                held += change
                peak = max(peak, held)
            if peak > mw.LIMIT:
                self.violation(f"group {group}: {peak} runs held a slot at once "
                               f"(limit {mw.LIMIT})")

    def _check_step(self, run_id: str, step: dict[str, Any],
                    lines: list[tuple[int, int]]) -> None:
        sid = step["step_id"]
        recorded = {a["attempt"]: a for a in step["attempts"]}
        if step["attempt"] != max(recorded, default=step["attempt"]):
            self.violation(f"{run_id} {sid}: committed attempt {step['attempt']} is not the "
                           f"last recorded {sorted(recorded)}")
        ran = {a for a, _ in lines}
        if ran - set(recorded):
            self.violation(f"{run_id} {sid}: ledger attempts {sorted(ran)} but recorded "
                           f"{sorted(recorded)}")
        if max(ran, default=0) != step["attempt"]:
            self.violation(f"{run_id} {sid}: committed attempt {step['attempt']} but the ledger "
                           f"ran up to {max(ran, default=0)}: {lines}")
        for attempt, rec in recorded.items():
            committed = None
            if attempt == step["attempt"] and step["status"] == "completed" and isinstance(
                    step["output"], dict):
                committed = step["output"].get("inc")
            if committed is None and rec.get("error"):
                found = re.search(r"\(inc (\d+)\)", str(rec["error"].get("message")))
                committed = int(found.group(1)) if found else None
            if committed is None and rec.get("finished_at"):
                committed = self._inc_at(rec["finished_at"])
            self._check_lines(run_id, sid, attempt, committed, lines)

    def _check_lines(self, run_id: str, key: str, attempt: int, committed: int | None,
                     lines: list[tuple[int, int]]) -> None:
        incs = [inc for a, inc in lines if a == attempt]
        where = f"{run_id} {key} attempt {attempt} (committed by incarnation {committed})"
        if not incs:
            self.violation(f"{where}: recorded but no ledger line")
            return
        if committed is not None:
            if max(incs) > committed:
                self.violation(f"{where}: ran again in incarnation {max(incs)}, after its "
                               f"result was committed: {incs}")
            if committed not in incs:
                self.violation(f"{where}: no ledger line from the committing incarnation: "
                               f"{incs}")
        # At most once per incarnation: so at most 1 + the kills while it was in flight.
        if len(incs) > 1 + (max(incs) - min(incs)) or len(set(incs)) != len(incs):
            self.violation(f"{where}: {len(incs)} ledger lines over incarnations {incs}")

    def _check_timers(self, details: dict[str, dict[str, Any]]) -> None:
        downtimes = [(a.ended_at or 0.0, b) for a, b in zip(self.incs, self.incs[1:],
                                                             strict=False)]
        for run_id, detail in details.items():
            for wp in detail["waitpoints"]:
                if wp["kind"] != "DATETIME" or wp["due_at"] is None:
                    continue
                due, fired = wp["due_at"], wp["resolved_at"]
                if fired is not None and fired < due - 0.001:
                    self.violation(f"{run_id} {wp['waitpoint_id']} fired {due - fired:.3f}s "
                                   "early")
                for down_from, nxt in downtimes:
                    if not down_from < due < (nxt.ready_at or nxt.ended_at or 0.0):
                        continue
                    self.report.timers_due_while_down += 1
                    bound = self._first_stable_ready(nxt.number, due)
                    if fired is None or (bound is not None and fired > bound + LATE):
                        self.violation(f"{run_id} {wp['waitpoint_id']} due {due:.3f} while the "
                                       f"daemon was down, fired {fired} (ready at {bound})")

    def _first_stable_ready(self, first: int, due: float) -> float | None:
        """Ready time of the first incarnation from ``first`` on that lived ``LATE`` seconds."""
        for inc in self.incs[first - 1:]:
            if inc.ready_at is None or inc.ready_at < due:
                continue
            if inc.ended_at is None or inc.ended_at - inc.ready_at >= LATE:
                return inc.ready_at
        return None


def _wp_key(run_id: str, wp: dict[str, Any]) -> tuple[str, ...] | None:
    if wp["kind"] == "EVENT":
        return ("event", mw.event_id(wp["match"]))
    if wp["kind"] == "SIGNAL":
        return ("signal", run_id, str(wp["match"]["n"]))
    if wp["kind"] == "MANUAL":
        return ("token", wp["token_id"])
    return None
