"""Cross-daemon wakeups on PostgreSQL (SPEC §13): NOTIFY the owner after commit, LISTEN for ours.

A daemon that records a resolution (signal, token, event, timer, child end), a cancel or a
pause/resume for a run another daemon owns sends ``pg_notify`` on the owner's channel with the
run id as payload. The NOTIFY goes from a reader connection *after* the writer's COMMIT
returned (scaleout.md §3: never from the writing transaction, whose batch it would slow and
whose rollback would leave a wakeup for nothing). Each daemon LISTENs on its own channel on a
dedicated connection; when that connection is lost it reconnects with backoff and asks for one
full poll (notifications sent while it was away are gone). The cluster loop's poll stays the
fallback: a lost NOTIFY costs one poll interval, never a resolution.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any

import asyncpg

from storage import ops, records

log = logging.getLogger(__name__)

# One statement, autocommitted on a reader connection: the owners of the given runs, except
# the sender and runs nobody owns, each get the run id on their channel.
NOTIFY_OWNERS = ("SELECT pg_notify('wf_daemon_' || owner, run_id) FROM runs "
                 "WHERE run_id = ANY($1::text[]) AND owner IS NOT NULL "
                 "AND owner IS DISTINCT FROM $2")
KEEPALIVE = 5.0  # seconds between liveness queries on the LISTEN connection
BACKOFF = (0.05, 2.0)  # first and longest wait between reconnection attempts


def channel(daemon_id: str) -> str:
    """The channel the daemon ``daemon_id`` LISTENs on (ids are uuid4: within 63 bytes)."""
    return f"wf_daemon_{daemon_id}"


def application_name(daemon_id: str) -> str:
    """The LISTEN session's name in ``pg_stat_activity`` (operators and tests find it)."""
    return f"wf-listen:{daemon_id}"


def _wp_run(wp: records.WaitpointRecord | None) -> list[str]:
    return [] if wp is None else [wp.run_id]


def runs_to_wake(batch: Sequence[ops.WriteOp[Any]], results: Sequence[Any]) -> set[str]:
    """The runs whose owner must act on what ``batch`` committed (``results`` its results)."""
    runs: set[str] = set()
    for op, result in zip(batch, results, strict=True):
        match op:
            case (ops.SendSignal() | ops.RequestCancel() | ops.RequestPause() | ops.ResumeRun()
                  | ops.ResolveWaitpoint()):
                runs.add(op.run_id)
            case ops.CompleteToken():
                runs.add(result.run_id)
            case ops.RecordEvent():
                runs.update(wp.run_id for wp in result.resolved)
            case ops.RequestChildCancels():
                runs.update(r.run_id for r in result)
            case ops.FireTimer():
                if result is not None:
                    runs.update(_wp_run(result.waitpoint))
            case ops.ClaimDueTimers():
                for fired in result:
                    runs.update(_wp_run(fired.waitpoint))
    return runs


async def listen(
    url: str,
    daemon_id: str,
    on_wake: Callable[[str | None], None],
    *,
    keepalive: float = KEEPALIVE,
) -> None:
    """LISTEN on ``daemon_id``'s channel until cancelled: ``on_wake(run_id)`` per notification,
    ``on_wake(None)`` after every (re)connection (poll everything: what was sent while the
    connection was away is lost). Connection loss → reconnect with exponential backoff."""
    delay = BACKOFF[0]
    while True:
        try:
            conn = await asyncpg.connect(
                url, server_settings={"application_name": application_name(daemon_id)})
        except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
            log.warning("listen.connect_failed: %r (retry in %.2fs)", exc, delay)
        else:
            delay = BACKOFF[0]
            try:
                await _session(conn, daemon_id, on_wake, keepalive)
            except (TimeoutError, OSError, asyncpg.PostgresError,
                    asyncpg.InterfaceError) as exc:
                log.warning("listen.lost: %r (reconnect in %.2fs)", exc, delay)
            finally:
                conn.terminate()
        await asyncio.sleep(delay)
        delay = min(delay * 2, BACKOFF[1])


async def _session(
    conn: asyncpg.Connection,
    daemon_id: str,
    on_wake: Callable[[str | None], None],
    keepalive: float,
) -> None:
    """LISTEN on ``conn`` until it is lost."""
    lost = asyncio.Event()
    conn.add_termination_listener(lambda _c: lost.set())
    await conn.add_listener(
        channel(daemon_id), lambda _c, _pid, _ch, payload: on_wake(str(payload)))
    on_wake(None)
    while not conn.is_closed():
        try:
            await asyncio.wait_for(lost.wait(), keepalive)
        except TimeoutError:
            # A half-open TCP connection never reports its loss: ask it something.
            await asyncio.wait_for(conn.fetchval("SELECT 1"), keepalive)
