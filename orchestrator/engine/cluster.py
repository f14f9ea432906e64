"""Many daemons on one database (SPEC §13): the loop through which a daemon takes its share.

Every tick (``daemon.poll``: a third of the lease, at most a second, by default) a daemon in a
cluster:
- declares dead every daemon whose lease ran out (database clock) and releases its runs
  (``RescueDaemons``; on PostgreSQL the release waits for a dead daemon's batch in flight);
- claims unowned runs that are not ended (``ClaimRuns``, ``FOR UPDATE SKIP LOCKED``) and takes
  them over as recovery does at start: a run in flight restarts (its step runs again, at most
  once more per takeover), a waiting one with a resolution resumes, a cancel is carried out;
- re-reads the earliest timer, so timers of adopted runs fire here (claims are SKIP LOCKED:
  each fires once whichever daemon gets it);
- admits queued runs of concurrency groups with room (``AdmitRuns``, flow control's safety
  net: the daemon where a slot frees admits the next run at once, this catches the rest);
- moves its own runs that another daemon resolved, cancelled, paused or resumed (recorded
  there; the owner finds it here within a tick): the "move pass";
- after a claim that failed (the connection dropped: it may have committed, its reply lost),
  looks for runs storage says it owns that it does not drive and takes them over: seen unknown
  on two ticks in a row, so a claim an actor is just making is never taken for one.

Between ticks the other daemons' NOTIFY wakes the same move pass at once
(``Storage.listen_for_runs``): a signal sent to a daemon that does not own the run reaches its
owner in milliseconds, and the tick is only the fallback for a notification lost.

The other way round, every status change this daemon commits is announced to the others
(``Storage.announce_states``, coalesced: one announcement at a time, the changes made meanwhile
go in the next), and theirs reach this daemon's ``wait``, ``watch`` and ``changes``
(``on_states``); ``on_missed`` after the listening connection came back (announcements sent
while it was away are gone: the readers re-read). Streams the same way, for ``stream --follow``
on a daemon that does not drive the run: the follower's daemon announces the stream it follows
(``follow_elsewhere``, renewed every poll interval while it follows), and the daemon writing
it then announces which of those streams got chunks (``chunk_written``: coalesced; a stream
nobody follows elsewhere costs nothing per chunk), and re-announces one at once when the
interest arrives (chunks committed before it did would otherwise wait for the poll).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Collection, Sequence

import structlog

import storage

log = structlog.get_logger("wf.cluster")

Move = Callable[[str, storage.RunRecord | None], Awaitable[None]]


class ClusterLoop:
    def __init__(
        self,
        storage_: storage.Storage,
        daemon_id: str,
        interval: float,
        *,
        claim_limit: int,
        take_over: Callable[[list[storage.RunRecord]], Awaitable[int]],
        move: Move,
        timer_due: Callable[[float], None],
        held: Callable[[], Collection[str]] = frozenset,
        drives: Callable[[str], bool] = lambda _r: True,  # this daemon drives the run
        on_states: Callable[[Sequence[storage.StatusChange]], None] = lambda _c: None,
        on_missed: Callable[[], None] = lambda: None,
        pump: Callable[[], Awaitable[None]] | None = None,
        on_chunks: Callable[[Sequence[storage.StreamNotice]], None] = lambda _w: None,
    ) -> None:
        self._storage = storage_
        self.daemon_id = daemon_id
        self.interval = interval
        self._claim_limit = claim_limit
        self._take_over = take_over
        self._move = move
        self._timer_due = timer_due
        self._held = held
        self._drives = drives
        self._stranded_checks = 0  # ticks left that look for runs a lost claim left us
        self._suspects: set[str] = set()  # owned in storage, unknown here at the last look
        self._on_states = on_states
        self._on_missed = on_missed
        self._tasks: list[asyncio.Task[None]] = []
        self._wake = asyncio.Event()  # set by a notification: run the move pass now
        self._moving = asyncio.Lock()  # one move pass at a time (tick and wakeup may meet)
        self._unsent: list[storage.StatusChange] = []  # our changes not yet announced
        self._send = asyncio.Event()
        self._on_chunks = on_chunks
        # Streams other daemons follow: until when (monotonic), unless they renew it.
        self._followed: dict[storage.StreamNotice, float] = {}
        self._unsent_chunks: dict[storage.StreamNotice, None] = {}  # ordered, each once
        self._unsent_follows: dict[storage.StreamNotice, None] = {}
        self._send_streams = asyncio.Event()
        self._connections = 0
        self._pump = pump
        self.adopted = 0
        self.woken = 0  # move passes a notification (or a reconnection) started
        self.announced = 0  # status changes announced to the other daemons
        self.chunks_announced = 0  # streams with new chunks announced (once per batch)

    async def claim(self) -> list[storage.RunRecord]:
        """Rescue the dead, then claim what nobody owns; the claimed runs, to take over."""
        dead = await self._storage.execute(storage.RescueDaemons(self.daemon_id))
        if dead:
            log.warning("daemons.rescued", daemons=list(dead))
        try:
            claimed = await self._storage.execute(
                storage.ClaimRuns(self.daemon_id, self._claim_limit))
        except storage.OwnershipLost:
            raise
        except BaseException:
            # Committed or not, we cannot tell: the next two ticks look (``adopt_stranded``).
            self._stranded_checks = 2
            raise
        return [c.run for c in claimed]

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._run(), name="cluster"),
            loop.create_task(self._mover(), name="cluster-wakeups"),
            loop.create_task(
                self._announce_on(self._send, self._send_states, "cluster.announce_failed"),
                name="cluster-announce"),
            loop.create_task(
                self._announce_on(self._send_streams, self._send_streams_now,
                                  "cluster.announce_streams_failed"),
                name="cluster-announce-streams"),
            loop.create_task(
                self._storage.listen_for_runs(
                    self.daemon_id, self._on_wake, self._heard, on_chunks=self._on_chunks,
                    on_followed=self._heard_followed),
                name="cluster-listen"),
        ]

    # ------------------------------------------------------------------ heard from the others

    def _on_wake(self, run_id: str | None) -> None:
        # Coalesced: a burst of notifications costs one pass, which sees every owned run
        # that needs moving (a run id of None, after a reconnection, means the same).
        if run_id is None:
            self._connections += 1
            if self._connections > 1:
                self._on_missed()
        self._wake.set()

    def _heard(self, changes: Sequence[storage.StatusChange]) -> None:
        self._on_states(changes)

    async def _mover(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            self.woken += 1
            try:
                await self.move_owned()
            except asyncio.CancelledError:
                raise
            except storage.OwnershipLost:
                return  # the lease keeper stops the daemon
            except Exception as exc:  # the poll tries again
                log.warning("cluster.wakeup_failed", error=repr(exc))

    # ------------------------------------------------------------------ told to the others

    def state_changed(self, run_id: str, status: str, workflow_id: str | None) -> None:
        """A status change this daemon committed (a ``ChangeFeed`` observer): announce it."""
        self._unsent.append(storage.StatusChange(run_id, status, workflow_id))
        self._send.set()

    @staticmethod
    async def _announce_on(wake: asyncio.Event, send: Callable[[], Awaitable[None]],
                           failed: str) -> None:
        # One announcement in flight at a time; what is committed meanwhile goes in the next
        # one (as group commit does), so a busy daemon sends a few large notifications.
        while True:
            await wake.wait()
            wake.clear()
            try:
                await send()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a hint: the others' polls are the fallback
                log.warning(failed, error=repr(exc))

    async def _send_states(self) -> None:
        changes, self._unsent = self._unsent, []
        self.announced += len(changes)
        await self._storage.announce_states(self.daemon_id, changes)

    @property
    def follow_ttl(self) -> float:
        """How long another daemon's "I follow this stream" holds unless renewed."""
        return max(10.0, 3 * self.interval)

    def chunk_written(self, run_id: str, stream_id: str) -> None:
        """A chunk this daemon committed (a ``StreamHub`` observer): announced if another
        daemon follows its stream."""
        notice = storage.StreamNotice(run_id, stream_id)
        until = self._followed.get(notice)
        if until is None:
            return
        if until < time.monotonic():
            del self._followed[notice]
            return
        self._unsent_chunks[notice] = None
        self._send_streams.set()

    def follow_elsewhere(self, run_id: str, stream_id: str) -> None:
        """This daemon follows a stream another daemon may write: tell the others (call it
        again every poll interval while following)."""
        self._unsent_follows[storage.StreamNotice(run_id, stream_id)] = None
        self._send_streams.set()

    def _heard_followed(self, followed: Sequence[storage.StreamNotice]) -> None:
        now = time.monotonic()
        for stale in [n for n, until in self._followed.items() if until < now]:
            del self._followed[stale]
        for notice in followed:
            self._followed[notice] = now + self.follow_ttl
            if self._drives(notice.run_id):
                self._unsent_chunks[notice] = None  # re-read what came before we knew
                self._send_streams.set()

    async def _send_streams_now(self) -> None:
        # A stream written many times since the last announcement goes once.
        follows, self._unsent_follows = list(self._unsent_follows), {}
        written, self._unsent_chunks = list(self._unsent_chunks), {}
        self.chunks_announced += len(written)
        await self._storage.announce_followed(self.daemon_id, follows)
        await self._storage.announce_chunks(self.daemon_id, written)

    # ------------------------------------------------------------------ the poll

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except storage.OwnershipLost:
                return  # the lease keeper stops the daemon
            except Exception as exc:  # the database is away: try again next tick
                log.warning("cluster.tick_failed", error=repr(exc))

    async def tick(self) -> None:
        if self._stranded_checks:
            await self.adopt_stranded()
        claimed = await self.claim()
        if claimed:
            self.adopted += await self._take_over(claimed)
            log.info("runs.adopted", runs=len(claimed))
        if self._pump is not None:
            # Flow control's safety net: queued runs whose slot freed without a pump reaching
            # them (a lock was busy, a pause was lifted, a limit was raised) start within a tick.
            await self._pump()
        due = await self._storage.next_timer_due()
        if due is not None:
            self._timer_due(due)
        await self.move_owned()

    async def adopt_stranded(self) -> int:
        """Take over the runs storage says this daemon owns and it does not drive (a claim
        that committed while its caller saw the connection fail). A run is taken only when it
        was unknown at the previous look too: between an actor's claim committing and the
        actor recording it there is a moment when it looks the same."""
        self._stranded_checks -= 1
        unknown = {r for r in await self._storage.owned_runs(self.daemon_id)
                   if not self._drives(r)}
        confirmed = sorted(unknown & self._suspects)
        # Two looks per failed claim, no more: a run that stays unknown for a reason of its
        # own (a throttled run waits unowned in memory) is not taken over again and again.
        self._suspects = unknown if self._stranded_checks else set()
        runs = []
        for run_id in confirmed:
            run = await self._storage.get_run(run_id)
            if run is not None and not run.is_terminal and not self._drives(run_id):
                runs.append(run)
        if not runs:
            return 0
        log.warning("runs.stranded_adopted", runs=len(runs))
        adopted = await self._take_over(runs)
        self.adopted += adopted
        return adopted

    async def move_owned(self) -> None:
        """Act on this daemon's runs that another daemon resolved, cancelled, paused or
        resumed: those waiting with a resolution or a cancel request, those paused in storage
        and not held here, and those held here whose pause is gone (resumed, or ended)."""
        async with self._moving:
            to_move = await self._storage.owned_runs_to_move(self.daemon_id)
            held = set(self._held())
            paused = set(await self._storage.paused_runs(self.daemon_id, sorted(held)))
            listed = set(to_move)
            to_move += sorted((paused ^ held) - listed)
            for run_id in to_move:
                await self._move(run_id, await self._storage.get_run(run_id))

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
