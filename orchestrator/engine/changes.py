"""The run status feed behind ``changes`` (live views): every committed status change, fanned
out in memory to each follower. Nothing polls: the places that commit a status change publish
it here right after the commit.

Each change is ``{"seq", "run_id", "workflow_id", "status", "at"}``. ``seq`` is an integer that
grows by one per change; it starts at the daemon's start time in microseconds since the epoch,
so it keeps growing across restarts (unless the clock goes back further than the changes made).
The last ``RECENT`` changes are kept: ``changes {since: seq}`` first replays those after
``seq``, then goes on live. When changes after ``since`` are no longer kept (too old, or from
before the daemon's start) a ``{"type": "gap", "since", "oldest"}`` notice comes first: the
follower missed some and should re-read what it shows (``list``). A follower that reads too
slowly loses changes and gets ``{"type": "lagged", "dropped", "since"}`` (``since``: the last
change it got), never unbounded buffering.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any

from runtime.clock import Clock

RECENT = 10_000
FOLLOWER_QUEUE = 1_000

Change = dict[str, Any]


class _Follower:
    def __init__(self, maxsize: int) -> None:
        self.queue: asyncio.Queue[Change] = asyncio.Queue(maxsize=maxsize)
        self.dropped = 0
        self.last_seq = 0

    def offer(self, change: Change) -> None:
        # Drops happen only while the queue is full, so every queued change is older than
        # them: the notice goes in behind those, ahead of the first change that fits again.
        if self.dropped and not self.queue.full():
            self.queue.put_nowait({"type": "lagged", "dropped": self.dropped})
            self.dropped = 0
        try:
            self.queue.put_nowait(change)
        except asyncio.QueueFull:
            self.dropped += 1

    async def next(self) -> Change:
        if self.dropped and self.queue.empty():
            notice: Change = {"type": "lagged", "dropped": self.dropped}
            self.dropped = 0
        else:
            notice = await self.queue.get()
        if notice.get("type") == "lagged":
            # The last change the reader got: ``changes {since}`` picks up from there.
            return {**notice, "since": self.last_seq}
        return notice


class ChangeFeed:
    def __init__(self, clock: Clock, recent: int = RECENT) -> None:
        self._clock = clock
        self._seq = int(clock.now() * 1_000_000)
        self._first = self._seq + 1  # the first seq of this daemon's life
        self._recent: deque[Change] = deque(maxlen=recent)
        self._followers: set[_Follower] = set()
        self.published = 0
        # Synchronous observers (the metrics): called on every change, so they must be cheap.
        self.observers: list[Callable[[str, str, str | None], None]] = []

    @property
    def last_seq(self) -> int:
        return self._seq

    def publish(self, run_id: str, status: str, workflow_id: str | None = None) -> None:
        """A status change of ``run_id`` was committed."""
        change = self._append(run_id, status, workflow_id)
        for observe in self.observers:
            observe(run_id, status, workflow_id)
        self._offer(change)

    def relay(self, run_id: str, status: str, workflow_id: str | None = None) -> None:
        """A status change another daemon committed and announced (SPEC §13): followers see
        it like ours; the observers do not (they count this daemon's own changes, and tell
        the other daemons of them)."""
        self._offer(self._append(run_id, status, workflow_id))

    def missed(self) -> None:
        """Other daemons' changes may have been lost (their announcements arrived on a
        connection that was then re-established): each follower gets a ``gap`` notice, so it
        re-reads what it shows."""
        notice: Change = {"type": "gap", "since": self._seq, "oldest": self._seq + 1}
        for follower in self._followers:
            follower.offer(notice)

    def _append(self, run_id: str, status: str, workflow_id: str | None) -> Change:
        self._seq += 1
        self.published += 1
        change: Change = {"seq": self._seq, "run_id": run_id, "workflow_id": workflow_id,
                          "status": status, "at": self._clock.now()}
        self._recent.append(change)
        return change

    def _offer(self, change: Change) -> None:
        for follower in self._followers:
            follower.offer(change)

    async def follow(
        self, since: int | None = None, maxsize: int = FOLLOWER_QUEUE
    ) -> AsyncIterator[Change]:
        """The changes after ``since`` still kept, then every new one; never ends by itself."""
        follower = _Follower(maxsize)
        # Replayed and live changes meet without a gap or a repeat: the follower is added and
        # the kept changes are read in one step (no await in between).
        self._followers.add(follower)
        backlog: list[Change] = []
        if since is not None:
            oldest = self._recent[0]["seq"] if self._recent else self._seq + 1
            if since + 1 < max(oldest, self._first):
                backlog.append({"type": "gap", "since": since, "oldest": oldest})
            backlog.extend(c for c in self._recent if c["seq"] > since)
        try:
            for change in backlog:
                if "seq" in change:
                    follower.last_seq = change["seq"]
                yield change
            while True:
                change = await follower.next()
                if "seq" in change:
                    if change["seq"] <= follower.last_seq:
                        continue  # already sent from the backlog
                    follower.last_seq = change["seq"]
                yield change
        finally:
            self._followers.discard(follower)

    @property
    def followers(self) -> int:
        return len(self._followers)
