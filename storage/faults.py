"""Named crash points for the reliability campaign (test-only; inert in production).

``WF_CRASH_AT=<point>:<nth>[,<point>:<nth>...]`` makes the process SIGKILL itself the ``nth``
time execution reaches ``point``, exactly where a power cut or ``kill -9`` would hurt most. With
the variable unset (production) ``crash_point`` costs one dict lookup. Every name a caller may
pass is listed in :data:`POINTS`, so a campaign can check that each one was reached.
"""

from __future__ import annotations

import os
import signal
import sys

POINTS: frozenset[str] = frozenset(
    {
        "batch.begun",  # writer: transaction begun, nothing applied
        "batch.executed",  # writer: every op applied, COMMIT not yet run
        "batch.committed",  # writer: committed, callers not yet woken
        "reply.sent",  # server: a write's reply written to the client
        "step.returned",  # actor: a step body returned, its result not yet enqueued
        "waitpoint.committed",  # actor: waitpoint rows committed, the run not yet parked
        "timer.due",  # scheduler: timers due, their firing not yet committed
        "timer.fired",  # scheduler: firing committed, runs not yet resumed
        "event.committed",  # send_event: event committed, waiting runs not yet resumed
        "recovery.scan",  # start-up: recovery has begun restarting runs
        "timers.armed",  # start-up: overdue timers fired, daemon not yet ready
        "migration.midway",  # start-up: between two migration statements
    }
)


def _parse(spec: str) -> dict[str, int]:
    armed: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, _, nth = part.partition(":")
        if name not in POINTS:
            raise ValueError(f"WF_CRASH_AT: unknown crash point {name!r}; known: {sorted(POINTS)}")
        armed[name] = int(nth or "1")
    return armed


_ARMED = _parse(os.environ.get("WF_CRASH_AT", ""))
_SEEN: dict[str, int] = {}


def crash_point(name: str) -> None:
    """SIGKILL this process if ``name`` is armed and this is its ``nth`` passage."""
    if not _ARMED or name not in _ARMED:
        return
    count = _SEEN.get(name, 0) + 1
    _SEEN[name] = count
    if count == _ARMED[name]:
        sys.stderr.write(f"crash point {name} reached ({count}): SIGKILL\n")
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)


# Mutants: deliberate bugs a campaign switches on to prove its checks can fail. Each is read
# once at import from WF_TEST_<NAME>=1 and is inert otherwise.
MUTANTS: frozenset[str] = frozenset(
    {
        "ACK_BEFORE_COMMIT",  # submit replies before the run row is committed
        "SKIP_STEP_DEDUP",  # a replay ignores recorded step results and runs steps again
        "SKIP_TIMER_ARM_ON_START",  # start-up neither fires overdue timers nor arms the rest
        "SKIP_IO_FAIL_STOP",  # the writer keeps writing after an I/O error (e.g. fsync EIO)
        "EARLY_TIMER_FIRE",  # the scheduler fires timers by a wall clock an hour fast
    }
)
_MUTANTS = frozenset(m for m in MUTANTS if os.environ.get(f"WF_TEST_{m}") == "1")


def mutant(name: str) -> bool:
    """True when the campaign switched mutant ``name`` on (never in production)."""
    return name in _MUTANTS


# Mutants that carry a value, read once at import from WF_TEST_<NAME>=<value>.
VALUED_MUTANTS: frozenset[str] = frozenset(
    {
        "SYNCHRONOUS",  # the writer's synchronous pragma ("normal": commits are not fsynced)
    }
)
_VALUED = {m: v for m in VALUED_MUTANTS if (v := os.environ.get(f"WF_TEST_{m}"))}


def mutant_value(name: str) -> str | None:
    """The value the campaign gave valued mutant ``name``, or None (always None in production)."""
    if name not in VALUED_MUTANTS:
        raise ValueError(f"unknown valued mutant {name!r}; known: {sorted(VALUED_MUTANTS)}")
    return _VALUED.get(name)
