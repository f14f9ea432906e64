"""Cross-daemon wakeups on PostgreSQL (SPEC §13): NOTIFY the owner after commit, LISTEN for ours.

A daemon that records a resolution (signal, token, event, timer, child end), a cancel or a
pause/resume for a run another daemon owns sends ``pg_notify`` on the owner's channel with the
run id as payload. The NOTIFY goes from a reader connection *after* the writer's COMMIT
returned (scaleout.md §3: never from the writing transaction, whose batch it would slow and
whose rollback would leave a wakeup for nothing). Each daemon LISTENs on its own channel on a
dedicated connection; when that connection is lost it reconnects with backoff and asks for one
full poll (notifications sent while it was away are gone). The cluster loop's poll stays the
fallback: a lost NOTIFY costs one poll interval, never a resolution.

Status changes go the other way round, to everyone: each daemon announces the status changes it
committed on one shared channel (``wf_run_state``), so ``wait``, ``watch`` and ``changes`` on a
daemon that does not drive the run see them too (each listener skips its own announcements).
The sender coalesces them (``orchestrator/engine/cluster.py``) and packs many per notification,
under PostgreSQL's payload limit.

Stream chunks the same way, on their own channel (``wf_stream_chunk``): which run's stream got
chunks (not the chunks: a follower elsewhere re-reads the stream from its next ``seq``), so
``stream --follow`` on a daemon that does not drive the run hears of them at once. Only streams
some other daemon said it follows (``wf_stream_follow``, renewed while it follows) are
announced: a stream nobody follows elsewhere costs no notification per chunk.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any

import asyncpg
import orjson

from storage import ops, records

log = logging.getLogger(__name__)

# One statement, autocommitted on a reader connection: the owners of the given runs, except
# the sender and runs nobody owns, each get the run id on their channel.
NOTIFY_OWNERS = ("SELECT pg_notify('wf_daemon_' || owner, run_id) FROM runs "
                 "WHERE run_id = ANY($1::text[]) AND owner IS NOT NULL "
                 "AND owner IS DISTINCT FROM $2")
STATES_CHANNEL = "wf_run_state"  # every daemon's status changes, for every other daemon
# One statement, autocommitted: the notifications are delivered together, in this order.
NOTIFY_STATES = f"SELECT pg_notify('{STATES_CHANNEL}', p) FROM unnest($1::text[]) AS p"
CHUNKS_CHANNEL = "wf_stream_chunk"  # which streams got chunks, for followers elsewhere
NOTIFY_CHUNKS = f"SELECT pg_notify('{CHUNKS_CHANNEL}', p) FROM unnest($1::text[]) AS p"
FOLLOWED_CHANNEL = "wf_stream_follow"  # streams followed on a daemon that may not write them
NOTIFY_FOLLOWED = f"SELECT pg_notify('{FOLLOWED_CHANNEL}', p) FROM unnest($1::text[]) AS p"
MAX_PAYLOAD = 7000  # bytes per notification (PostgreSQL refuses 8000 and more)
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


def pack_states(daemon_id: str, changes: Sequence[records.StatusChange]) -> list[str]:
    """``changes`` as notification payloads of at most ``MAX_PAYLOAD`` bytes, in order, each
    ``{"d": sender, "c": [[run_id, status, workflow_id], ...]}``."""
    return _pack(daemon_id, [[c.run_id, c.status, c.workflow_id] for c in changes])


def unpack_states(daemon_id: str, payload: str) -> list[records.StatusChange]:
    """The changes another daemon announced in ``payload``; none if it is our own (or not
    one of ours: the channel is public, a stray payload is ignored)."""
    try:
        return [records.StatusChange(str(r), str(s), None if w is None else str(w))
                for r, s, w in _unpack(daemon_id, payload)]
    except (TypeError, ValueError) as exc:
        log.warning("listen.bad_payload: %r", exc)
        return []


def pack_chunks(daemon_id: str, written: Sequence[records.StreamNotice]) -> list[str]:
    """``written`` as payloads like ``pack_states``': ``{"d": sender, "c": [[run_id,
    stream_id], ...]}``."""
    return _pack(daemon_id, [[w.run_id, w.stream_id] for w in written])


def unpack_chunks(daemon_id: str, payload: str) -> list[records.StreamNotice]:
    """The streams another daemon announced in ``payload`` (none for our own, or a stray)."""
    try:
        return [records.StreamNotice(str(r), str(s)) for r, s in _unpack(daemon_id, payload)]
    except (TypeError, ValueError) as exc:
        log.warning("listen.bad_payload: %r", exc)
        return []


def _pack(daemon_id: str, items: Sequence[list[str | None]]) -> list[str]:
    head = len(orjson.dumps({"d": daemon_id, "c": []}))
    payloads: list[str] = []
    batch: list[list[str | None]] = []
    size = head
    for item in items:
        length = len(orjson.dumps(item)) + 1
        if head + length > MAX_PAYLOAD:
            continue  # ids this long cannot travel: the listeners' poll covers the run
        if batch and size + length > MAX_PAYLOAD:
            payloads.append(orjson.dumps({"d": daemon_id, "c": batch}).decode())
            batch, size = [], head
        batch.append(item)
        size += length
    if batch:
        payloads.append(orjson.dumps({"d": daemon_id, "c": batch}).decode())
    return payloads


def _unpack(daemon_id: str, payload: str) -> list[Any]:
    """The items of another daemon's ``payload`` (raises ``ValueError``/``TypeError`` on a
    malformed one); none if it is our own."""
    try:
        doc = orjson.loads(payload)
        if doc["d"] == daemon_id:
            return []
        items = doc["c"]
    except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"not an announcement: {exc!r}") from exc
    if not isinstance(items, list):
        raise TypeError("the items are not a list")
    return items


def _stream_listener(
    daemon_id: str, heard: Callable[[Sequence[records.StreamNotice]], None]
) -> Callable[[object, int, str, object], None]:
    def listener(_c: object, _pid: int, _ch: str, payload: object) -> None:
        notices = unpack_chunks(daemon_id, str(payload))
        if notices:
            heard(notices)

    return listener


async def listen(
    url: str,
    daemon_id: str,
    on_wake: Callable[[str | None], None],
    on_states: Callable[[Sequence[records.StatusChange]], None],
    *,
    on_chunks: Callable[[Sequence[records.StreamNotice]], None] | None = None,
    on_followed: Callable[[Sequence[records.StreamNotice]], None] | None = None,
    keepalive: float = KEEPALIVE,
) -> None:
    """LISTEN on ``daemon_id``'s channel and the status channel until cancelled:
    ``on_wake(run_id)`` per wakeup, ``on_states(changes)`` per other daemon's announcement,
    ``on_chunks(written)`` and ``on_followed(followed)`` per other daemon's stream
    announcements (those channels only if given), ``on_wake(None)`` after every
    (re)connection (poll everything: what was sent while the connection was away is lost).
    Connection loss → reconnect with exponential backoff."""
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
                await _session(conn, daemon_id, on_wake, on_states,
                               {CHUNKS_CHANNEL: on_chunks, FOLLOWED_CHANNEL: on_followed},
                               keepalive)
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
    on_states: Callable[[Sequence[records.StatusChange]], None],
    on_streams: dict[str, Callable[[Sequence[records.StreamNotice]], None] | None],
    keepalive: float,
) -> None:
    """LISTEN on ``conn`` until it is lost."""
    lost = asyncio.Event()

    def heard_states(_c: object, _pid: int, _ch: str, payload: object) -> None:
        changes = unpack_states(daemon_id, str(payload))
        if changes:
            on_states(changes)

    conn.add_termination_listener(lambda _c: lost.set())
    await conn.add_listener(
        channel(daemon_id), lambda _c, _pid, _ch, payload: on_wake(str(payload)))
    await conn.add_listener(STATES_CHANNEL, heard_states)
    for name, heard in on_streams.items():
        if heard is not None:
            await conn.add_listener(name, _stream_listener(daemon_id, heard))
    on_wake(None)
    while not conn.is_closed():
        try:
            await asyncio.wait_for(lost.wait(), keepalive)
        except TimeoutError:
            # A half-open TCP connection never reports its loss: ask it something.
            await asyncio.wait_for(conn.fetchval("SELECT 1"), keepalive)
