"""Admission in the database (issue 20, phase 3): may a pending run start now, decided in one
transaction that many daemons serialise on (``AdmitRuns``), a debounced submission that
collapses into the key's pending run whichever daemon receives it (``DebounceSubmit``), and a
step's take from the shared rate-limit buckets (``TakeRateLimits``, SPEC §2a).

One definition for both backends. SQLite has one writer, so nothing needs locking there
(``NO_LOCKS``); PostgreSQL passes one transaction advisory lock (``storage.postgres.claims``)
that every admission and debounce decision takes first, so decisions of all daemons are
serialised. One lock, not one per group: a batch holds its locks until it commits and may carry
several decisions, so per-group locks taken in op order deadlocked two daemons' batches (the
deadlock detector's second stalled both writers past a 1 s lease in the e2e test).

Nothing here is a counter: a group's holders are the runs in ``run_groups`` whose stored status
holds a slot (running, waiting, paused, or pending with ``admitted_at``), its queue the pending
ones without ``admitted_at``. A row of an ended run counts for nothing and is deleted when met.
"""

from __future__ import annotations

import dataclasses
import sqlite3
from collections import Counter
from collections.abc import Iterable
from typing import Any, Protocol

import orjson

from storage import ops, records
from storage.sqlite import mutations, rows

_R_COLUMNS = ", ".join(f"r.{c.strip()}" for c in rows.RUN_COLUMNS.split(","))
_SELECT_RUN = f"SELECT {rows.RUN_COLUMNS} FROM runs WHERE run_id = ?"
_LIVE = tuple(sorted(s.value for s in records.NON_TERMINAL_STATUSES))
_HOLDS = ("(r.status IN ('running', 'waiting', 'paused') "
          "OR (r.status = 'pending' AND r.admitted_at IS NOT NULL))")
_QUEUED = ("r.status = 'pending' AND r.admitted_at IS NULL AND r.paused = 0 "
           "AND r.cancel_requested IS NULL AND (r.scheduled_at IS NULL OR r.scheduled_at <= ?) "
           "AND (r.expires_at IS NULL OR r.expires_at > ?) AND NOT EXISTS "
           "(SELECT 1 FROM paused_workflows p WHERE p.workflow_id = r.workflow_id)")
_BUSY_PUMP_GROUPS = 32  # groups the periodic safety net looks at per call


class Locks(Protocol):
    def lock(self) -> None:
        """Serialise this transaction with every other admission decision until it ends."""


class _NoLocks:
    """SQLite: one writer, every transaction is alone."""

    def lock(self) -> None:
        return None


NO_LOCKS: Locks = _NoLocks()


def group_text(group: ops.GroupKey) -> str:
    """How a group is stored in ``run_groups.grp``."""
    return orjson.dumps(list(group)).decode()


def group_key(text: str) -> ops.GroupKey:
    """The group stored as ``text`` in ``run_groups.grp``."""
    scope, key = orjson.loads(text)
    return (str(scope), None if key is None else str(key))


def plan_groups(flow: Any) -> tuple[ops.GroupKey, ...]:
    """The concurrency groups of a run's stored flow plan."""
    if not isinstance(flow, dict):
        return ()
    return tuple((str(s), None if k is None else str(k)) for s, k in flow.get("groups", ()))


def fairness(groups: Iterable[ops.GroupKey]) -> str:
    """The key a run competes under in a queue: its first keyed group's key."""
    return next((key for _, key in groups if key is not None), "")


class _Decision:
    """The state of one ``AdmitRuns`` transaction: the holders it counted, what it admitted."""

    def __init__(self, conn: sqlite3.Connection, op: ops.AdmitRuns) -> None:
        self.conn = conn
        self.op = op
        self.holders: dict[ops.GroupKey, Counter[str]] = {}  # group -> fairness key -> count
        self.admitted: list[records.RunRecord] = []

    # --------------------------------------------------------------- counting

    def count(self, group: ops.GroupKey) -> Counter[str]:
        """The group's holders by fairness key."""
        found = self.holders.get(group)
        if found is not None:
            return found
        grp = group_text(group)
        marks = ", ".join("?" for _ in _LIVE)
        self.conn.execute(  # rows of runs that ended (or were pruned) count for nothing
            "DELETE FROM run_groups WHERE grp = ? AND NOT EXISTS (SELECT 1 FROM runs r "
            f"WHERE r.run_id = run_groups.run_id AND r.status IN ({marks}))", (grp, *_LIVE))
        flows = self.conn.execute(
            "SELECT r.flow FROM run_groups g JOIN runs r ON r.run_id = g.run_id "
            f"WHERE g.grp = ? AND {_HOLDS}", (grp,)).fetchall()
        found = Counter(fairness(plan_groups(rows.loads(f[0]))) for f in flows)
        self.holders[group] = found
        return found

    def full(self, group: ops.GroupKey) -> bool:
        limit = self.op.rules.limit(group)
        return limit is not None and sum(self.count(group).values()) >= limit

    def throttled_until(self, run: records.RunRecord) -> float | None:
        """When the run's throttle window has room, if later than now."""
        rule = self.op.rules.throttle(run.workflow_id)
        if rule is None or run.throttle_key is None:
            return None
        times = [float(t) for (t,) in self.conn.execute(
            "SELECT admitted_at FROM runs WHERE throttle_key = ? AND admitted_at > ? "
            "ORDER BY admitted_at", (run.throttle_key, self.op.at - 2 * rule.period))]
        at = rule.next_start(times, self.op.at)
        return at if at > self.op.at else None

    # --------------------------------------------------------------- changes

    def admit(self, run: records.RunRecord) -> None:
        self.conn.execute(
            "UPDATE runs SET admitted_at = ?, updated_at = ?, "
            "epoch = CASE WHEN owner IS NULL OR owner <> ? THEN epoch + 1 ELSE epoch END, "
            "owner = ? WHERE run_id = ?",
            (self.op.at, self.op.at, self.op.daemon_id, self.op.daemon_id, run.run_id))
        fair = fairness(plan_groups(run.flow))
        for group in plan_groups(run.flow):
            if group in self.holders:
                self.holders[group][fair] += 1
        self.admitted.append(dataclasses.replace(run, admitted_at=self.op.at,
                                                 updated_at=self.op.at))

    def queue(self, run: records.RunRecord, groups: tuple[ops.GroupKey, ...]) -> None:
        """Queue ``run`` on ``groups``. A queued run is nobody's (``ClaimRuns`` leaves it
        alone): whichever daemon's pump admits it claims it then, and no other daemon still
        believes it drives it."""
        self.conn.executemany("INSERT OR IGNORE INTO run_groups (grp, run_id) VALUES (?, ?)",
                              [(group_text(g), run.run_id) for g in groups])
        self.conn.execute("UPDATE runs SET owner = NULL WHERE run_id = ? AND owner IS NOT NULL",
                          (run.run_id,))

    def queued_in(self, group: ops.GroupKey, limit: int) -> list[records.RunRecord]:
        """The best ``limit`` queued runs of ``group``: a replacer's first (they are the
        pump's first choice whatever their priority), then priority, then age."""
        replacers = self.op.rules.replacers(group)
        first = ""
        if replacers:
            marks = ", ".join("?" for _ in replacers)
            first = f"CASE WHEN r.workflow_id IN ({marks}) THEN 0 ELSE 1 END, "
        found = self.conn.execute(
            f"SELECT {_R_COLUMNS} FROM run_groups g JOIN runs r ON r.run_id = g.run_id "
            f"WHERE g.grp = ? AND {_QUEUED} AND (r.owner IS NULL OR r.owner = ?) "
            f"ORDER BY {first}r.priority DESC, r.number LIMIT ?",
            (group_text(group), self.op.at, self.op.at, self.op.daemon_id, *replacers,
             limit)).fetchall()
        return [rows.run_from_row(r) for r in found]

    # --------------------------------------------------------------- the pump

    def pump(self, group: ops.GroupKey) -> None:
        """Admit queued runs of ``group`` while it has room: a replacer's runs first (a
        cancel-in-progress newcomer takes the slot it freed), then fewest holders of their
        fairness key, then priority, then age; a run starts only when each of its other
        groups has room too and its throttle lets it."""
        limit = self.op.rules.limit(group)
        room = self.op.limit if limit is None else limit - sum(self.count(group).values())
        if room <= 0:
            return
        candidates = self.queued_in(group, self.op.limit)
        counts = self.count(group)
        replacers = set(self.op.rules.replacers(group))
        taken = {r.run_id for r in self.admitted}
        while room > 0 and candidates:
            best = min(candidates, key=lambda r: (r.workflow_id not in replacers,
                                                  counts[fairness(plan_groups(r.flow))],
                                                  -r.priority, r.number))
            candidates.remove(best)
            if best.run_id in taken or not self._may_start(best, group):
                continue
            self.admit(best)
            taken.add(best.run_id)
            room -= 1

    def _may_start(self, run: records.RunRecord, pumped: ops.GroupKey) -> bool:
        for other in plan_groups(run.flow):
            if other == pumped:
                continue
            if self.full(other):
                return False
        return self.throttled_until(run) is None


def admit_runs(conn: sqlite3.Connection, op: ops.AdmitRuns, *, locks: Locks = NO_LOCKS
               ) -> ops.Admitted:
    locks.lock()
    d = _Decision(conn, op)
    offer = None
    if op.offer is not None:
        row = conn.execute(_SELECT_RUN, (op.offer,)).fetchone()
        offer = None if row is None else rows.run_from_row(row)
    offer_groups = () if offer is None else plan_groups(offer.flow)
    if op.release:
        marks = ", ".join("?" for _ in op.release)
        conn.execute(f"UPDATE runs SET admitted_at = NULL, owner = NULL WHERE run_id IN "
                     f"({marks}) AND status = 'pending'", op.release)
    result = ops.Admitted("none")
    if op.offer is not None:
        result = _offer(d, offer, offer_groups)
    for group in sorted(set(op.pump), key=group_text):
        d.pump(group)
    if op.pump_queued:
        for group in _groups_with_queued(d):
            d.pump(group)
    offered = result.offered
    if offered == "queued" and offer is not None and any(
            r.run_id == offer.run_id for r in d.admitted):
        offered = "admitted"
    return dataclasses.replace(result, offered=offered, admitted=tuple(d.admitted))


def _offer(d: _Decision, run: records.RunRecord | None,
           groups: tuple[ops.GroupKey, ...]) -> ops.Admitted:
    op = d.op
    if run is None or run.status is not records.RunStatus.PENDING:
        return ops.Admitted("gone")
    if run.admitted_at is not None:
        # Admitted before (its daemon died before the run started, or a second offer):
        # it may start, here, unless another daemon that owns it starts it.
        claimed = d.conn.execute(
            "UPDATE runs SET epoch = CASE WHEN owner IS NULL THEN epoch + 1 ELSE epoch END, "
            "owner = ? WHERE run_id = ? AND (owner IS NULL OR owner = ?) RETURNING run_id",
            (op.daemon_id, run.run_id, op.daemon_id)).fetchone()
        if claimed is None:
            return ops.Admitted("gone")
        d.admitted.append(run)
        return ops.Admitted("admitted")
    until = d.throttled_until(run)
    if until is not None:
        return ops.Admitted("throttled", throttled_until=until)
    if not groups:
        d.admit(run)
        return ops.Admitted("admitted")
    strategies = dict(zip(groups, op.strategies, strict=False))
    full = next((g for g in groups if d.full(g)), None)
    replaced_holders: tuple[str, ...] = ()
    replaced_queued: tuple[records.RunRecord, ...] = ()
    if full is not None:
        strategy = strategies.get(full, "queue")
        if strategy == "cancel-newest":
            return ops.Admitted("refused", group=full)
        if strategy == "cancel-in-progress":
            replaced_holders, replaced_queued = _replace(d, full, run.run_id)
    d.queue(run, groups)
    for group in groups:
        d.pump(group)
    blocked = next((g for g in groups if d.full(g)), full)
    return ops.Admitted("queued", group=blocked, replaced_holders=replaced_holders,
                        replaced_queued=replaced_queued)


def _replace(d: _Decision, group: ops.GroupKey, newcomer: str
             ) -> tuple[tuple[str, ...], tuple[records.RunRecord, ...]]:
    """cancel-in-progress: the group's holders (to cancel) and its queued runs, which leave
    every queue now (to end), so the newcomer is next."""
    grp = group_text(group)
    holders = tuple(r[0] for r in d.conn.execute(
        f"SELECT r.run_id FROM run_groups g JOIN runs r ON r.run_id = g.run_id "
        f"WHERE g.grp = ? AND {_HOLDS} ORDER BY r.number", (grp,)))
    queued = [rows.run_from_row(r) for r in d.conn.execute(
        f"SELECT {_R_COLUMNS} FROM run_groups g JOIN runs r ON r.run_id = g.run_id "
        "WHERE g.grp = ? AND r.status = 'pending' AND r.admitted_at IS NULL "
        "AND r.run_id <> ? ORDER BY r.number", (grp, newcomer))]
    for run in queued:
        d.conn.execute("DELETE FROM run_groups WHERE run_id = ?", (run.run_id,))
    return holders, tuple(queued)


def _groups_with_queued(d: _Decision) -> list[ops.GroupKey]:
    found = d.conn.execute(
        f"SELECT DISTINCT g.grp FROM run_groups g JOIN runs r ON r.run_id = g.run_id "
        f"WHERE {_QUEUED} LIMIT ?", (d.op.at, d.op.at, _BUSY_PUMP_GROUPS)).fetchall()
    return sorted((group_key(text) for (text,) in found), key=group_text)


# ------------------------------------------------------------------------------ reading

def group_states_sql(groups: int | None) -> tuple[str, str]:
    """The two reads of ``Storage.concurrency_groups``, counted as the op counts: the holders
    ``(grp, run_id)`` oldest first, and the due queued runs per group ``(grp, count)`` (its
    first two parameters are the time, twice). ``groups``: that many ``grp`` parameters
    follow; None: every group."""
    where = "" if groups is None else f" AND g.grp IN ({', '.join('?' for _ in range(groups))})"
    join = "FROM run_groups g JOIN runs r ON r.run_id = g.run_id"
    return (f"SELECT g.grp, r.run_id {join} WHERE {_HOLDS}{where} ORDER BY g.grp, r.number",
            f"SELECT g.grp, COUNT(*) {join} WHERE {_QUEUED}{where} GROUP BY g.grp")


# ------------------------------------------------------------------------------ debounce

_DEBOUNCE_TARGET = (
    f"SELECT {rows.RUN_COLUMNS} FROM runs WHERE workflow_id = ? AND status = 'pending' "
    "AND admitted_at IS NULL AND started_at IS NULL AND scheduled_at > ? "
    "AND json_extract(flow, '$.debounce') = ? ORDER BY number DESC LIMIT 1"
)


def debounce_submit(conn: sqlite3.Connection, op: ops.DebounceSubmit, *,
                    locks: Locks = NO_LOCKS) -> ops.DebouncedCreated:
    create = op.create
    locks.lock()
    now = create.created_at
    # Its start timer has not come due: the run has not been let start, so it may still move.
    row = conn.execute(_DEBOUNCE_TARGET, (create.workflow_id, now, op.key)).fetchone()
    if row is None:
        made = mutations.create_run(conn, create)
        return ops.DebouncedCreated(made.run, made.created)
    run = rows.run_from_row(row)
    due = now + op.period
    if op.max_wait is not None:
        due = min(due, run.created_at + op.max_wait)
    expires_at: float | ops.Unset | None = ops.UNSET
    if run.expires_at is not None:
        expires_at = due + (run.expires_at - (run.scheduled_at or run.created_at))
    moved = mutations.reschedule_pending(conn, ops.ReschedulePending(
        run.run_id, at=now, scheduled_at=due, expires_at=expires_at,
        input=create.input if op.trailing else ops.UNSET))
    return ops.DebouncedCreated(moved, created=False)


# ------------------------------------------------------------------------------ rate limits

_BUCKET = "SELECT tokens, updated_at FROM rate_limits WHERE key = ?"


def take_rate_limits(conn: sqlite3.Connection, op: ops.TakeRateLimits, *,
                     locks: Locks = NO_LOCKS) -> tuple[float, tuple[str, ...]]:
    """Token buckets refilled continuously at ``limit / window`` a second by the callers'
    wall clocks (a clock behind the stored one refills nothing); read here, under the lock,
    so no daemon takes from a level another daemon has already spent."""
    locks.lock()
    levels: dict[str, float] = {}
    wait, short = 0.0, []
    for take in op.takes:
        level = levels.get(take.key)
        if level is None:
            row = conn.execute(_BUCKET, (take.key,)).fetchone()
            rate = take.limit / take.window
            level = float(take.limit) if row is None else min(
                float(take.limit), row[0] + max(0.0, op.now - row[1]) * rate)
        if level < take.units:
            short.append(take.key)
            wait = max(wait, (take.units - level) / (take.limit / take.window))
        levels[take.key] = level - take.units
    if short:
        return wait, tuple(dict.fromkeys(short))
    for key, level in levels.items():
        mutations.put_rate_limit(conn, ops.PutRateLimit(key, level, op.now))
    return 0.0, ()


APPLY: dict[type[Any], mutations.Apply] = {
    ops.AdmitRuns: admit_runs,
    ops.DebounceSubmit: debounce_submit,
    ops.TakeRateLimits: take_rate_limits,
}
