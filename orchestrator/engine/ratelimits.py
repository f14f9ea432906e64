"""Step rate limits shared by every run of the daemon, persisted (SPEC §2a).

A bucket's state is read from storage before its first take and written back, in one commit
for every bucket of the take, before the step runs: a restart neither refills a bucket nor
forgets a take. Buckets refill by the wall clock (a clock that jumps back refills nothing).
"""

from __future__ import annotations

from collections.abc import Sequence

import storage
from runtime.clock import Clock
from runtime.ratelimit import Buckets, Take, acquire_all


class StoredRateLimiter:
    def __init__(self, storage_: storage.Storage, clock: Clock) -> None:
        self._storage = storage_
        self._clock = clock
        self._buckets = Buckets()
        self._loaded: set[str] = set()

    async def acquire_all(self, takes: Sequence[Take]) -> None:
        for take in takes:
            if take.key not in self._loaded:
                stored = await self._storage.get_rate_limit(take.key)
                if stored is not None:
                    self._buckets.load(take.key, stored.tokens, stored.updated_at)
                self._loaded.add(take.key)
        await acquire_all(self._buckets, takes, self._clock, self._persist)

    async def _persist(self, takes: Sequence[Take]) -> None:
        ops: list[storage.WriteOp[None]] = []
        for key in dict.fromkeys(t.key for t in takes):
            tokens, at = self._buckets.state[key]
            ops.append(storage.PutRateLimit(key, tokens, at))
        await self._storage.commit(ops)
