"""Step rate limits shared by every run of the daemon and by every daemon on its database,
persisted (SPEC §2a, §13).

Each take is one ``TakeRateLimits`` op: the buckets' levels are read in the op's transaction,
serialised with every other daemon's takes, and written back, all or none, before the step
runs. Nothing is kept in memory, so a restart neither refills a bucket nor forgets a take, and
a daemon never takes from a level another daemon has spent. Buckets refill by the wall clock
(a clock behind the stored one refills nothing).
"""

from __future__ import annotations

from collections.abc import Sequence

import storage
from runtime.clock import Clock
from runtime.ratelimit import Take, exceeded


class StoredRateLimiter:
    def __init__(self, storage_: storage.Storage, clock: Clock) -> None:
        self._storage = storage_
        self._clock = clock

    async def acquire_all(self, takes: Sequence[Take]) -> None:
        """Take all of ``takes`` or none; when one is short, wait until all have room
        (``queue``) or raise ``RateLimitExceeded`` (a short take says ``fail``)."""
        op_takes = tuple(storage.BucketTake(t.key, t.limit, t.window, t.units) for t in takes)
        while True:
            wait, short = await self._storage.execute(
                storage.TakeRateLimits(op_takes, self._clock.now()))
            if not short:
                return
            failing = [t for t in takes if t.key in short and t.on_limit == "fail"]
            if failing:
                raise exceeded(failing[0], wait)
            await self._clock.sleep(wait)
