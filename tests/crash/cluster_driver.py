"""The mixed-workload crash round on PostgreSQL with two daemons (issue 20, Reliability).

Two real ``wf daemon`` processes share one PostgreSQL database under the workload of
``mixed_workflows.py`` (``mix-plan`` runs: steps, sleeps, events, signals, tokens, retries,
children, compensation; about 30% of them as its flow-controlled twin ``mix-plan-limited``,
concurrency limit 2 per group, admitted in the database). Requests go to either daemon at
random. A seeded list of
*disruptions* is played meanwhile:

- ``kill``: ``kill -9`` of one daemon, restarted after a random pause (sometimes armed to die
  inside a later commit batch: ``WF_CRASH_AT=batch.begun|batch.executed:n``);
- ``stop``: SIGSTOP of one daemon past its lease, then SIGCONT: it must exit 70 (lease lost)
  and have committed nothing after it woke; the other adopts its runs meanwhile;
- ``pgrestart``: ``pg_ctl restart -m immediate`` of the server (every session cut, WAL replay);
- ``terminate``: ``pg_terminate_backend`` of one daemon's writer session;
- ``listen``: ``pg_terminate_backend`` of one daemon's LISTEN session, when daemons have one.

Then both daemons run to the end, every run drains (so every queued twin run ran), ``LIMIT + 1``
probe runs of the twin per group are submitted at once and drained, and the checks of the SQLite
campaign follow, adapted to two daemons alive at once (incarnation numbers are global, in start
order): nothing acknowledged lost; every run ends as ``runtime.testing`` says; every
acknowledged delivery resolved its wait; a step's committed attempt ran in the incarnation that
committed it and never ran after its result was committed; any other incarnation that ran it
died (kill, stop, crash point), so in-flight steps run at most once more per takeover; timers
never fire early; no group ever had more than its limit of twin runs between their first and
last ledger lines (wall times, across both daemons); every twin run was admitted in the
database; the probes found every slot of their group free (none leaked). Every violation
starts with ``seed=<seed>``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import re
import signal
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg

from orchestrator.client import Client, RemoteError
from tests.crash import mixed_workflows as mw
from tests.crash.daemon_process import DaemonProcess
from tests.crash.mixed_driver import (
    BIG,
    DRAIN_GRACE,
    LOST,
    POLL,
    ROOT,
    TERMINAL,
    Incarnation,
    MixedRound,
    Request,
    plan_seconds,
)

SUBMITTERS = 6
PROBE_SLEEP = 1.0  # a probe's sleep between its two steps: its slot is held that long at least
WAITED = 0.25  # a twin run admitted this long after it was created waited for a slot
# Errors a daemon answers while the database is away: the outcome is unknown, not refused.
UNKNOWN_OUTCOME = ("STORAGE", "OWNERSHIP_LOST", "UNAVAILABLE", "INTERNAL")
KINDS = ("kill", "stop", "pgrestart", "terminate", "listen")
WEIGHTS = (40, 15, 15, 20, 10)


def ledger_lines(path: Path) -> list[tuple[str, str, int, int, float]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        run_id, key, attempt, inc, at = line.split()
        out.append((run_id, key, int(attempt), int(inc), float(at)))
    return out


@dataclass
class Slot:
    """One of the two daemons: its process across restarts and what is expected of it."""

    name: str
    daemon: DaemonProcess
    inc: Incarnation | None = None
    expect: str = ""  # why it is about to die: kill | stop ("" = it must not)
    restarting: bool = False


@dataclass
class ClusterReport:
    seed: int
    runs: int = 0
    disruptions: Counter[str] = field(default_factory=Counter)
    deaths: Counter[str] = field(default_factory=Counter)
    acked: int = 0
    indeterminate: int = 0
    deliveries: int = 0
    ledger_lines: int = 0
    reruns: int = 0  # step executions by an incarnation that died before committing them
    woke_runs: int = 0  # of those, run by a frozen daemon as it woke, after another recorded
    adopted: int = 0
    limited: int = 0  # runs of the flow-controlled twin (the probes not included)
    waited: int = 0  # of those, admitted more than WAITED after they were created
    group_peak: int = 0  # most twin runs of one group holding a slot at once (ledger, no probe)
    drain_seconds: float = 0.0
    seconds: float = 0.0
    skipped: list[str] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)

    def line(self) -> str:
        dis = " ".join(f"{k}={v}" for k, v in sorted(self.disruptions.items())) or "none"
        deaths = " ".join(f"{k}={v}" for k, v in sorted(self.deaths.items())) or "none"
        return (f"seed={self.seed} runs={self.runs} acked={self.acked} "
                f"indeterminate={self.indeterminate} deliveries={self.deliveries} "
                f"disruptions[{dis}] deaths[{deaths}] ledger={self.ledger_lines} "
                f"reruns={self.reruns} woke_runs={self.woke_runs} limited={self.limited} "
                f"waited={self.waited} group_peak={self.group_peak} "
                f"drain={self.drain_seconds:.1f}s "
                f"time={self.seconds:.1f}s violations={len(self.violations)}")


class ClusterRound(MixedRound):
    """One seeded round; ``restart_db`` restarts the PostgreSQL server (``-m immediate``)."""

    TRIGGERS = False  # its daemons load ``mixed_workflows`` only

    def __init__(self, workdir: Path, seed: int, runs: int, url: str,
                 restart_db: Callable[[], None], *, lease: float = 2.0, scale: float = 1.0,
                 disruptions: int = 4, env: dict[str, str] | None = None) -> None:
        # The flow-controlled twin (``mw.LIMITED``, about 30% of the runs) is in the mix:
        # admission across daemons is decided in the database (migration 0012).
        super().__init__(workdir, seed, runs, scale=scale)
        self.url = url
        self.lease = lease
        self.restart_db = restart_db
        self.env = env or {}  # for both daemons (``mw.LIMIT_ENV`` proves the checks can fail)
        self.creport = ClusterReport(seed, runs)
        self.slots = [self._slot(workdir, name) for name in ("a", "b")]
        # Every kind comes up within a few rounds (rotated by seed), then at random.
        kinds = [KINDS[(seed + i) % len(KINDS)] if i < len(KINDS) else
                 self.rng.choices(KINDS, WEIGHTS)[0] for i in range(disruptions)]
        self.rng.shuffle(kinds)
        self.plan = [(round(self.rng.uniform(0.2, 1.2), 3), kind, self.rng.randrange(2),
                      self.rng.random()) for kind in kinds]
        self.released = 0  # runs the submitters may send: a wave per disruption
        self.generation = 0  # bumped by every disruption: deliveries may be sent again
        self.stops: list[tuple[int, float]] = []  # (incarnation, SIGCONT time)
        self.probes: dict[str, list[str]] = {}  # group -> its probe runs (after the drain)
        self.cuts: list[tuple[float, float]] = []  # database restarts and killed sessions
        self.unavailable: dict[str, list[float]] = {}  # run -> its commits lost (from logs)
        self.phase = "created"  # where the round is: a round that hangs reports it

    def _slot(self, workdir: Path, name: str) -> Slot:
        root = workdir / name
        root.mkdir()
        daemon = DaemonProcess(
            root, modules=["tests.crash.mixed_workflows"], paths=[ROOT],
            extra=f"max_recoveries = 1000\nlease = \"{self.lease}s\"",
            env={mw.LEDGER_ENV: str(self.ledger), **self.env})
        text = daemon.config_path.read_text()
        daemon.config_path.write_text(text.replace(
            f"path = {json.dumps(str(daemon.db))}", f"url = {json.dumps(self.url)}"))
        return Slot(name, daemon)

    def violation(self, msg: str) -> None:
        self.creport.violations.append(f"seed={self.seed} {msg}")

    # ---------------------------------------------------------------- daemons

    async def start(self, slot: Slot, crash_at: str | None = None) -> None:  # type: ignore[override]
        """Start ``slot`` as the next incarnation (global numbering, in start order)."""
        slot.restarting = True
        failures = 0
        try:
            while True:
                inc = Incarnation(len(self.incs) + 1, time.time())
                self.incs.append(inc)
                slot.daemon.incarnation = inc.number - 1
                env = None
                if crash_at:
                    env = {"WF_CRASH_AT": crash_at, "WF_CRASH_AFTER": "timers.armed"}
                try:
                    await asyncio.to_thread(slot.daemon.start, env)
                except RuntimeError as exc:
                    inc.ended_at, inc.end = time.time(), "startup"
                    self.creport.deaths["startup"] += 1
                    if "crash point" not in str(exc):
                        # The database may be restarting under it: try again, a few times.
                        failures += 1
                        if failures > 20:
                            self.violation(f"daemon {slot.name} failed to start: "
                                           f"{str(exc)[-800:]}")
                            raise
                        await asyncio.sleep(0.5)
                    crash_at = None
                    continue
                inc.ready_at = time.time()
                slot.inc, slot.expect = inc, ""
                return
        finally:
            slot.restarting = False

    def live(self) -> list[Slot]:
        return [s for s in self.slots if not s.restarting and s.expect == ""
                and s.daemon.proc is not None and s.daemon.proc.poll() is None]

    def _died(self, slot: Slot, how: str) -> None:
        inc = slot.inc
        if inc is not None and inc.ended_at is None:
            inc.ended_at, inc.end = time.time(), how
        self.creport.deaths[how] += 1
        self.generation += 1

    async def monitor(self) -> None:
        """A daemon that dies unasked must have died at its armed crash point (then it is
        restarted) or lost its lease to a database outage (exit 70); anything else is a
        violation."""
        while True:
            for slot in self.slots:
                proc = slot.daemon.proc
                if slot.restarting or slot.expect or proc is None or proc.poll() is None:
                    continue
                err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                if "crash point batch." in err:
                    self._died(slot, "batch")
                elif proc.returncode == 70:
                    self._died(slot, "lease_lost")
                else:
                    self._died(slot, "unexpected")
                    number = slot.inc.number if slot.inc else None
                    self.violation(f"daemon {slot.name} (incarnation {number}) exited "
                                   f"{proc.returncode}: {err[-800:]} {slot.daemon.tail(8)}")
                await self.start(slot)
            await asyncio.sleep(0.05)

    # ---------------------------------------------------------------- disruptions

    async def chaos(self, todo: list[str]) -> None:
        waves = len(self.plan) + 1
        for n, (delay, kind, target, extra) in enumerate(self.plan):
            # A wave of new runs, so every disruption lands on work in progress.
            self.released = len(todo) * (n + 1) // waves
            await asyncio.sleep(delay)
            slot = self.slots[target]
            self.phase = f"waiting for daemon {slot.name} to be live for {kind}"
            while slot not in self.live():
                await asyncio.sleep(0.05)
            if kind == "listen" and not await self._listener_pid(slot):
                self.creport.skipped.append(
                    "listen: the daemons hold no LISTEN session (no listener in this build)")
                kind = "terminate"
            self.creport.disruptions[kind] += 1
            self.generation += 1
            cut_from = time.time()
            self.phase = f"disruption {kind} of daemon {slot.name}"
            if kind == "kill":
                await self._kill(slot, extra)
            elif kind == "stop":
                await self._stop(slot, extra)
            elif kind == "pgrestart":
                await asyncio.to_thread(self.restart_db)
            elif kind == "terminate":
                hit = await self._terminate(
                    slot, "SELECT pg_terminate_backend(backend_pid::integer) FROM daemons "
                          "WHERE pid = $1 AND backend_pid IS NOT NULL")
                self.creport.disruptions["terminate_hit"] += hit
            else:
                hit = await self._terminate(slot, "SELECT pg_terminate_backend($1::integer)",
                                            await self._listener_pid(slot))
                self.creport.disruptions["listen_hit"] += hit
            if kind in ("pgrestart", "terminate", "listen"):
                self.cuts.append((cut_from, time.time()))

    async def _kill(self, slot: Slot, extra: float) -> None:
        slot.expect = "kill"
        slot.daemon.kill9()
        self._died(slot, "kill")
        await asyncio.sleep(extra * 2 * self.lease)  # sometimes long enough to be adopted
        armed = None
        if extra < 0.4:
            point = self.rng.choice(["batch.begun", "batch.executed"])
            armed = f"{point}:{self.rng.randint(2, 60)}"
        await self.start(slot, armed)

    async def _stop(self, slot: Slot, extra: float) -> None:
        proc = slot.daemon.proc
        assert proc is not None and slot.inc is not None
        slot.expect = "stop"
        inc = slot.inc
        os.kill(proc.pid, signal.SIGSTOP)
        await asyncio.sleep(self.lease * (1.5 + extra))
        woke = time.time()
        self.stops.append((inc.number, woke))
        os.kill(proc.pid, signal.SIGCONT)
        code = await asyncio.to_thread(_wait, proc, 15.0)
        self._died(slot, "stop")
        log = slot.daemon.tail(400)
        # Whichever notices first stops it: the lease keeper (daemon.lease_lost) or a write
        # refused by the fence or a dead session (daemon.fail_stop); either way exit 70.
        if code != 70 or '"daemon.fail_stop"' not in log:
            self.violation(f"daemon {slot.name} (incarnation {inc.number}) stopped past its "
                           f"lease exited {code} after SIGCONT (want 70 and daemon.fail_stop)")
        await self.start(slot)

    async def _terminate(self, slot: Slot, sql: str, arg: int | None = None) -> bool:
        """Whether a session was ended (its writer may not have one open yet)."""
        proc = slot.daemon.proc
        if proc is None:
            return False
        with contextlib.suppress(OSError, asyncpg.CannotConnectNowError):
            conn = await asyncpg.connect(self.url)
            try:
                return bool(await conn.fetchval(sql, arg if arg is not None else proc.pid))
            finally:
                await conn.close()
        return False

    async def _listener_pid(self, slot: Slot) -> int | None:
        """A daemon's LISTEN session, if the daemons keep one (any of them: the session does
        not say whose it is)."""
        with contextlib.suppress(OSError, asyncpg.PostgresError):
            conn = await asyncpg.connect(self.url)
            try:
                pid = await conn.fetchval(
                    "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                    "AND query ILIKE 'LISTEN%' AND pid <> pg_backend_pid() "
                    "ORDER BY random() LIMIT 1")
            finally:
                await conn.close()
            return None if pid is None else int(pid)
        return None

    # ---------------------------------------------------------------- the round

    async def run(self) -> ClusterReport:  # type: ignore[override]
        t0 = time.monotonic()
        details: dict[str, dict[str, Any]] = {}
        tasks: list[asyncio.Task[None]] = []
        try:
            self.phase = "starting"
            for slot in self.slots:
                await self.start(slot)
            todo = list(self.inputs)
            tasks = [asyncio.ensure_future(self.monitor()),
                     asyncio.ensure_future(self.deliverer_loop())]
            submitters = [asyncio.ensure_future(self.submit_loop(todo))
                          for _ in range(SUBMITTERS)]
            await self.chaos(todo)
            self.released = len(todo)
            self.phase = "submitting the rest"
            await asyncio.gather(*submitters)
            self.phase = "draining"
            await self.drain()
            self.phase = "probing the groups"
            await self.probe_groups()
            self.phase = "draining the probes"
            await self.drain()
            self.phase = "collecting"
            details = await self.collect_any()
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, *LOST):
                    await task
            for slot in self.slots:
                proc = slot.daemon.proc
                if proc is not None and proc.poll() is None:
                    os.kill(proc.pid, signal.SIGCONT)  # cut short while stopped: let it end
                    code = slot.daemon.stop()
                    if code != 0:
                        self.violation(f"daemon {slot.name} exited {code} on SIGTERM: "
                                       f"{slot.daemon.tail(5)}")
                if slot.inc is not None and slot.inc.ended_at is None:
                    slot.inc.ended_at, slot.inc.end = time.time(), "clean"
        self.creport.adopted = sum(
            '"runs.adopted"' in line for s in self.slots
            for line in (s.daemon.log_path.read_text().splitlines()
                         if s.daemon.log_path.exists() else []))
        if details:
            await self.check_cluster(details)
        self.creport.seconds = time.monotonic() - t0
        return self.creport

    async def client_call(self, fn: Callable[[Client], Any]) -> Any:
        """``fn`` on a client of a live daemon picked at random (LOST if none answers)."""
        live = self.live()
        if not live:
            await asyncio.sleep(0.05)
            raise ConnectionError("no live daemon")
        slot = self.rng.choice(live)
        async with Client.connect(slot.daemon.socket) as c:
            return await fn(c)

    async def submit_loop(self, todo: list[str]) -> None:
        while True:
            run_id = next((r for r in todo if r not in self.submits), None)
            if run_id is None:
                return
            if todo.index(run_id) >= self.released:
                await asyncio.sleep(0.02)
                continue
            req = Request("submit", run_id, len(self.incs))
            self.submits[run_id] = req
            self.last_send = time.time()
            workflow = mw.LIMITED if run_id in self.limited else mw.PARENT
            try:
                await self.client_call(
                    lambda c, r=run_id, w=workflow: c.submit(w, self.inputs[r], run_id=r))
                req.state = "acked"
            except RemoteError as exc:
                unknown = exc.code.startswith(UNKNOWN_OUTCOME)
                req.state = "indeterminate" if unknown else "refused"
                req.detail = f"{exc.code}: {exc.message}"
            except LOST:
                req.state = "indeterminate"

    async def deliverer_loop(self) -> None:
        seen: dict[str, tuple[float, int]] = {}
        while True:
            with contextlib.suppress(*LOST, RemoteError):
                waiting = await self.client_call(
                    lambda c: c.list(status="waiting", limit=BIG))
                for run in waiting["runs"]:
                    run_id = run["run_id"]
                    plan = (self.inputs.get(run_id) or self.children.get(run_id) or {}).get(
                        "plan")
                    if not plan or not any(op[0] in ("event", "signal", "token") for op in plan):
                        continue
                    mark = (run["updated_at"], self.generation)
                    if seen.get(run_id) == mark:
                        continue
                    detail = await self.client_call(lambda c, r=run_id: c.get(r))
                    settled = True
                    for wp in detail["waitpoints"]:
                        if wp["status"] == "waiting":
                            settled &= await self.deliver_one(run_id, wp)
                    # Only once looked at and delivered: a daemon lost mid-look or mid-send
                    # must not hide the run from the next look.
                    if settled:
                        seen[run_id] = mark
            await asyncio.sleep(POLL)

    async def deliver_one(self, run_id: str, wp: dict[str, Any]) -> bool:
        """Send what ``wp`` (seen waiting just now) waits for; False if the outcome is unknown.
        An earlier send whose outcome was unknown is sent again: the wait was registered before
        it and is still waiting, so it did not land (a signal is not idempotent: a second one
        that landed would go to the inbox)."""
        kind = wp["kind"]
        if kind == "EVENT":
            key: tuple[str, ...] = ("event", mw.event_id(wp["match"]))
        elif kind == "SIGNAL":
            key = ("signal", run_id, str(wp["match"]["n"]))
        elif kind == "MANUAL":
            key = ("token", wp["token_id"])
        else:
            return True
        prev = self.deliveries.get(key)
        if prev is not None and (prev.state == "acked" or (
                prev.incarnation == self.generation and prev.state != "indeterminate")):
            return True
        req = Request(key[0], run_id, self.generation)
        self.deliveries[key] = req
        self.creport.deliveries += 1
        self.last_send = time.time()

        async def send(c: Client) -> None:
            if kind == "EVENT":
                await c.send_event(mw.EVENT_TYPE, mw.event_payload(wp["match"]),
                                   event_id=mw.event_id(wp["match"]))
            elif kind == "SIGNAL":
                await c.signal(run_id, mw.SIGNAL, mw.signal_payload(wp["match"]))
            else:
                await c.complete_token(wp["token_id"], mw.token_payload(wp["token_id"]))

        try:
            await self.client_call(send)
            req.state = "acked"
        except RemoteError as exc:
            req.detail = f"{exc.code}: {exc.message}"
            if exc.code == "TOKEN_CONFLICT" and prev is not None:
                req.state = "acked"  # an earlier, indeterminate completion landed
            elif exc.code.startswith(UNKNOWN_OUTCOME):
                req.state = "indeterminate"
            else:
                req.state = "refused"
                self.violation(f"{key} to {run_id} refused: {req.detail}")
        except LOST:
            req.state = "indeterminate"
        return req.state != "indeterminate"

    async def drain(self) -> None:
        ready = time.time()
        slack = max(plan_seconds(i["plan"]) for i in self.inputs.values())
        while True:
            try:
                runs = (await self.client_call(lambda c: c.list(limit=BIG)))["runs"]
            except (*LOST, RemoteError):
                await asyncio.sleep(POLL)
                continue
            pending = [r for r in runs if r["status"] not in TERMINAL]
            if not pending:
                break
            bound = max(ready, self.last_send) + DRAIN_GRACE + slack + 2 * self.lease
            if time.time() > bound:
                for r in pending[:20]:
                    detail = await self.client_call(lambda c, x=r["run_id"]: c.get(x))
                    waiting = [(w["waitpoint_id"], w["status"]) for w in detail["waitpoints"]]
                    self.violation(f"run {r['run_id']} still {r['status']} "
                                   f"{time.time() - ready:.1f}s into the drain, waitpoints "
                                   f"{waiting}; deliveries: {self._sent_to(r['run_id'])}")
                break
            await asyncio.sleep(POLL)
        self.creport.drain_seconds = time.time() - ready

    async def probe_groups(self) -> None:
        """After the drain, with every disruption over: ``LIMIT + 1`` new twin runs per group,
        submitted at once to either daemon. No run holds a slot now, so ``LIMIT`` of them must
        be admitted at once and the last must queue and then run (``_check_admissions``): a
        slot leaked by a crash, a takeover or a lost commit would make a second one queue."""
        for _ in range(200):  # a daemon the monitor is restarting: wait for both (10 s)
            if len(self.live()) == len(self.slots):
                break
            await asyncio.sleep(0.05)
        plan: list[mw.Op] = [["step"], ["sleep", PROBE_SLEEP], ["step"]]
        groups = [f"g{i}" for i in range(3)]  # the groups mixed_driver gives the twin
        ids = []
        for group in groups:
            self.probes[group] = []
            for j in range(mw.LIMIT + 1):
                run_id = f"s{self.seed}-probe-{group}-{j}"
                self.inputs[run_id] = {"key": f"p{group}.{j}", "plan": plan, "group": group}
                self.limited.add(run_id)
                self.probes[group].append(run_id)
                ids.append(run_id)
        self.released = BIG
        await asyncio.gather(*(self.submit_loop(ids) for _ in ids))

    async def collect_any(self) -> dict[str, dict[str, Any]]:
        for _ in range(100):
            live = self.live()
            if live:
                with contextlib.suppress(*LOST):
                    self.daemon = live[0].daemon  # collect() reads through self.daemon
                    return await self.collect()
            await asyncio.sleep(0.1)
        self.violation("no live daemon to collect the results from")
        return {}

    # ---------------------------------------------------------------- checks

    def _unavailable(self) -> dict[str, list[float]]:
        """When each run's commit failed for want of the database (``run.storage_unavailable``
        in the daemons' logs): the actor then retries from the journal, so a step whose result
        that commit carried runs again in the same incarnation. A killed session is noticed at
        its next use, later than the driver's record of the cut, hence the logs."""
        out: dict[str, list[float]] = defaultdict(list)
        for slot in self.slots:
            for rec in slot.daemon.events():
                if rec.get("event") == "run.storage_unavailable" and rec.get("run_id"):
                    at = datetime.fromisoformat(str(rec["timestamp"]).replace("Z", "+00:00"))
                    out[str(rec["run_id"])].append(at.timestamp())
        return out

    async def check_cluster(self, details: dict[str, dict[str, Any]]) -> None:
        self.unavailable = self._unavailable()
        await self.check(details)  # the SQLite campaign's checks, with the overrides below
        self.creport.acked, self.creport.indeterminate = self.report.acked, \
            self.report.indeterminate
        self._check_stopped_wrote_nothing(details)
        self._check_admissions(details)

    def _check_ledger(self, details: dict[str, dict[str, Any]]) -> None:
        rows = ledger_lines(self.ledger)
        self.creport.ledger_lines = len(rows)
        lines: dict[tuple[str, str], list[tuple[int, int, float]]] = defaultdict(list)
        for run_id, key, attempt, inc, at in rows:
            lines[(run_id, key)].append((attempt, inc, at))
        expected: set[tuple[str, str]] = set()
        for run_id, detail in details.items():
            for step in detail["steps"]:
                sid = step["step_id"]
                expected.add((run_id, sid))
                self._cluster_step(run_id, step, lines.get((run_id, sid), []))
            for comp in detail.get("compensations", []):
                key = f"{comp['step_id']}#undo"
                expected.add((run_id, key))
                got = lines.get((run_id, key), [])
                if not got:
                    self.violation(f"{run_id} {key}: compensation recorded but no ledger line")
                self._cluster_lines(run_id, key, 0, None, comp["finished_at"], got)
        for run_id, key in set(lines) - expected:
            self.violation(f"ledger lines for {run_id} {key} with no recorded step: "
                           f"{lines[(run_id, key)]}")
        self._check_group_limits(rows)

    def _cluster_step(self, run_id: str, step: dict[str, Any],
                      lines: list[tuple[int, int, float]]) -> None:
        sid = step["step_id"]
        recorded = {a["attempt"]: a for a in step["attempts"]}
        if step["attempt"] != max(recorded, default=step["attempt"]):
            self.violation(f"{run_id} {sid}: committed attempt {step['attempt']} is not the "
                           f"last recorded {sorted(recorded)}")
        ran = {a for a, _, _ in lines}
        if ran - set(recorded) or max(ran, default=0) != step["attempt"]:
            self.violation(f"{run_id} {sid}: ledger attempts {sorted(ran)} but recorded "
                           f"{sorted(recorded)} (committed {step['attempt']})")
        for attempt, rec in recorded.items():
            committed = None
            if attempt == step["attempt"] and step["status"] == "completed" and \
                    isinstance(step["output"], dict):
                committed = step["output"].get("inc")
            if committed is None and rec.get("error"):
                found = re.search(r"\(inc (\d+)\)", str(rec["error"].get("message")))
                committed = int(found.group(1)) if found else None
            got = [line for line in lines if line[0] == attempt]
            if not got:
                self.violation(f"{run_id} {sid} attempt {attempt}: recorded but no ledger line")
                continue
            self._cluster_lines(run_id, sid, attempt, committed, rec.get("finished_at"), got)

    def _cluster_lines(self, run_id: str, key: str, attempt: int, committed: int | None,
                       finished_at: float | None, lines: list[tuple[int, int, float]]) -> None:
        where = f"{run_id} {key} attempt {attempt} (committed by incarnation {committed})"
        incs = [inc for _, inc, _ in lines]
        if committed is not None and committed not in incs:
            self.violation(f"{where}: no ledger line from the committing incarnation: {lines}")
        # Within one incarnation a step runs again only after a commit lost to a database
        # outage (its result was not recorded: the actor retries from the journal).
        by_inc: dict[int, list[float]] = defaultdict(list)
        for _, inc, at in lines:
            by_inc[inc].append(at)
        for inc, times in by_inc.items():
            times.sort()
            for t1, t2 in itertools.pairwise(times):
                lost = any(t1 <= u <= t2 for u in self.unavailable.get(run_id, ()))
                if not lost and not any(t1 <= b and a <= t2 for a, b in self.cuts):
                    self.violation(f"{where}: ran twice in incarnation {inc} with no database "
                                   f"outage between: {lines}")
            self.creport.reruns += len(times) - 1
        # Every other incarnation that ran it must have died (in flight at a takeover).
        final = committed
        if final is None:  # not said by the result: the last run before it was recorded
            before = [x for x in lines if finished_at is None or x[2] <= finished_at + 0.001]
            final = max(before or lines, key=lambda x: x[2])[1]
        woke = dict(self.stops)
        for _, inc, at in lines:
            if inc in woke and at >= woke[inc] and inc != final:
                # Begun before its daemon froze (SIGSTOP) and run when it woke, before the
                # lease keeper stopped it: in flight at the takeover, not a new start.
                self.creport.woke_runs += 1
            elif finished_at is not None and at > finished_at + 0.001:
                self.violation(f"{where}: incarnation {inc} ran it at {at:.3f}, after its "
                               f"result was recorded at {finished_at:.3f}: {lines}")
            if inc == final:
                continue
            self.creport.reruns += 1
            ended = self.incs[inc - 1].end if 0 < inc <= len(self.incs) else "?"
            if ended in ("running", "clean"):
                self.violation(f"{where}: incarnation {inc} ran it too and did not die "
                               f"(duplicate execution without a takeover): {lines}")

    def _check_group_limits(self, rows: list[tuple[str, str, int, int, float]]) -> None:
        """A twin run holds its group's slot at least from its first ledger line to its last
        (admitted before its first step, ended after its last), whichever daemon wrote them:
        no group may show more than ``LIMIT`` such spans at once, by the lines' wall times
        (both daemons run on this machine's clock). Lines a frozen daemon wrote as it woke
        are left out: they may come after the run ended elsewhere (``woke_runs``)."""
        woke = dict(self.stops)
        spans: dict[str, tuple[float, float]] = {}
        for run_id, _key, _attempt, inc, at in rows:
            if run_id not in self.limited or (inc in woke and at >= woke[inc]):
                continue
            first, last = spans.get(run_id, (at, at))
            spans[run_id] = (min(first, at), max(last, at))
        by_group: dict[str, list[tuple[str, float, float]]] = defaultdict(list)
        for run_id, (first, last) in spans.items():
            by_group[self.inputs[run_id]["group"]].append((run_id, first, last))
        probes = {r for ids in self.probes.values() for r in ids}
        for group, group_spans in sorted(by_group.items()):
            worst = _most_at_once(group_spans)
            workload = _most_at_once([x for x in group_spans if x[0] not in probes])
            self.creport.group_peak = max(self.creport.group_peak, len(workload))
            if len(worst) > mw.LIMIT:
                shown = {r: (round(a, 3), round(b, 3)) for r, a, b in group_spans if r in worst}
                self.violation(f"group {group}: {len(worst)} runs held a slot at once (limit "
                               f"{mw.LIMIT}), first and last ledger lines {shown}")

    def _check_admissions(self, details: dict[str, dict[str, Any]]) -> None:
        """Every twin run went through admission in the database (``admitted_at``); after the
        drain a group admits ``LIMIT`` probes at once: they were all admitted before the
        first of them ended (each ends ``PROBE_SLEEP`` after its start, at least)."""
        probes = {r for ids in self.probes.values() for r in ids}
        limited = [details[r] for r in sorted(self.limited) if r in details]
        self.creport.limited = sum(run["run_id"] not in probes for run in limited)
        for run in limited:
            if run["admitted_at"] is None:
                self.violation(f"{run['run_id']} ({run['status']}) of the limited workflow was "
                               f"never admitted in the database")
            elif run["admitted_at"] - run["created_at"] > WAITED and run["run_id"] not in probes:
                self.creport.waited += 1
        for group, ids in sorted(self.probes.items()):
            states = {r: (self.submits[r].state if r in self.submits else "unsent") for r in ids}
            if any(r not in details or state != "acked" for r, state in states.items()):
                self.violation(f"group {group}: probes not all acknowledged or missing: {states}")
                continue
            runs = [details[r] for r in ids]
            admitted = sorted(p["admitted_at"] or float("inf") for p in runs)
            ended = min(p["finished_at"] or float("inf") for p in runs)
            free = sum(a < ended for a in admitted)
            if free < mw.LIMIT:
                times = {p["run_id"]: (p["created_at"], p["admitted_at"], p["finished_at"])
                         for p in runs}
                self.violation(f"group {group}: after the drain {free} of {mw.LIMIT} slots "
                               f"were free (a slot leaked): (created, admitted, finished) "
                               f"{times}")

    def _check_timers(self, details: dict[str, dict[str, Any]]) -> None:
        for run_id, detail in details.items():
            for wp in detail["waitpoints"]:
                if wp["kind"] != "DATETIME" or wp["due_at"] is None:
                    continue
                due, fired = wp["due_at"], wp["resolved_at"]
                if fired is not None and fired < due - 0.001:
                    self.violation(f"{run_id} {wp['waitpoint_id']} fired {due - fired:.3f}s "
                                   "early")

    def _check_stopped_wrote_nothing(self, details: dict[str, dict[str, Any]]) -> None:
        """A daemon stopped past its lease commits nothing once it wakes: no step attempt it
        ran is recorded with a finish after its SIGCONT."""
        for inc, woke in self.stops:
            for run_id, detail in details.items():
                for step in detail["steps"]:
                    out = step["output"]
                    for rec in step["attempts"]:
                        mine = (rec["attempt"] == step["attempt"] and isinstance(out, dict)
                                and out.get("inc") == inc) or f"(inc {inc})" in str(
                                    (rec.get("error") or {}).get("message"))
                        if mine and (rec.get("finished_at") or 0) >= woke:
                            self.violation(f"{run_id} {step['step_id']} attempt "
                                           f"{rec['attempt']} committed by incarnation {inc} "
                                           f"after it woke from SIGSTOP past its lease")


def _most_at_once(spans: list[tuple[str, float, float]]) -> set[str]:
    """The largest set of ``(run, first, last)`` spans open at one moment (a start at the
    very time of an end counts as overlapping it)."""
    edges = sorted([(a, 1, r) for r, a, _ in spans] + [(b, -1, r) for r, _, b in spans],
                   key=lambda e: (e[0], -e[1]))
    held: set[str] = set()
    worst: set[str] = set()
    for _, change, run_id in edges:
        if change > 0:
            held.add(run_id)
        else:
            held.discard(run_id)
        if len(held) > len(worst):
            worst = set(held)
    return worst


def _wait(proc: Any, timeout: float) -> int | None:
    try:
        return int(proc.wait(timeout=timeout))
    except Exception:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        return None

