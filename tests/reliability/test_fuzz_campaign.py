"""Hostile socket input at volume (issue 10 item 6, campaign: >= 1M frames per event loop).

Hypothesis is too slow for a million frames, so this drives ``fast_frame`` from
``test_hostile_input`` (the same frame families and the same per-frame oracle, ``check_reply``)
from ``random.Random`` seeded with ``SEED``: ``CONNS`` connections at once, each pipelining up
to ``WINDOW`` unanswered frames and reconnecting every ``PER_CONN`` frames, plus short
connections that vanish mid-line, are abandoned unread, or send a huge line (``run_plan``).
The daemon never dies, answers every frame as the oracle says, still serves a fresh client
after, and its fd count returns to its baseline ± 2 within 5 s. CI: 20,000 frames per loop.

``WF_FUZZ_MUTANTS=1`` runs the CI size against ``rel_mutants`` WRONG_CODE and FD_LEAK.
"""

from __future__ import annotations

import asyncio
import os
import random
import sys
import time
from collections import Counter
from pathlib import Path

import orjson
import pytest

from tests.crash.campaign import CAMPAIGN, SEED
from tests.reliability.conftest import REL_DIR, RelDaemon, wait_fds_back
from tests.reliability.test_hostile_input import (
    LOOPS,
    Expect,
    check_reply,
    fast_frame,
    fast_frames,
    healthy,
    run_plan,
    start_fuzz_daemon,
)

FRAMES = 1_000_000 if CAMPAIGN else 20_000
CONNS = 4
PER_CONN = 50_000 if CAMPAIGN else 5_000
WINDOW = 1000  # unanswered frames per connection: bounds memory on both sides
ENDINGS = ["vanish", "abandon", "huge"]
MUTANTS = CAMPAIGN or os.environ.get("WF_FUZZ_MUTANTS") == "1"  # the campaign runs them

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800 if CAMPAIGN else 120)]


class Tally:
    def __init__(self) -> None:
        self.frames = 0  # frames written
        self.replies = 0  # replies checked
        self.short = Counter[str]()  # short connections by ending


async def pipeline(sock: Path, rng: random.Random, base: int, n: int, tally: Tally) -> None:
    """Send ``n`` frames on one connection, at most ``WINDOW`` unanswered, checking replies."""
    reader, writer = await asyncio.open_unix_connection(str(sock), limit=2**22)
    expected: dict[int, Expect] = {}
    anonymous: Counter[str] = Counter()  # replies without an id, by code
    room = asyncio.Semaphore(WINDOW)
    sent_all = asyncio.Event()

    def done() -> bool:
        return sent_all.is_set() and not expected and not +anonymous

    async def read() -> None:
        try:
            while not done():
                line = await asyncio.wait_for(reader.readline(), 30)
                assert line.endswith(b"\n"), f"connection closed early: {line!r}"
                reply = orjson.loads(line)
                if reply["id"] is None:
                    code = reply["error"]["code"]
                    assert anonymous[code] > 0, f"unexpected {reply}"
                    anonymous[code] -= 1
                else:
                    check_reply(reply, expected.pop(reply["id"]))
                tally.replies += 1
                room.release()
        except BaseException:
            for _ in range(WINDOW):  # unblock the sender, which then sees the failure
                room.release()
            raise

    reading = asyncio.create_task(read())
    try:
        chunk: list[bytes] = []
        for i in range(n):
            f = fast_frame(rng, base + i)
            if f.expect is not None:
                if reading.done():  # a failed oracle check: stop sending, report it
                    break
                await room.acquire()
                if f.expect.id is None:
                    anonymous[f.expect.code or ""] += 1
                else:
                    expected[f.expect.id] = f.expect
            chunk.append(f.line + b"\n")
            tally.frames += 1
            if len(chunk) >= 64 or room.locked():
                writer.write(b"".join(chunk))
                chunk.clear()
                await writer.drain()
        writer.write(b"".join(chunk))
        await writer.drain()
        sent_all.set()
        if done():  # everything already answered: the reader waits for a line that won't come
            reading.cancel()
        else:
            await reading
        if reading.done() and not reading.cancelled():
            reading.result()  # a failed check
    finally:
        reading.cancel()
        writer.transport.abort()


async def short_connection(sock: Path, rng: random.Random, base: int, tally: Tally,
                           endings: list[str]) -> None:
    ending = rng.choice(endings)
    frames = fast_frames(rng, base, rng.randint(1, 40))
    await run_plan(sock, frames, ending)
    tally.short[ending] += 1
    tally.frames += len(frames) + 1  # + the half line or huge line that ends it


async def campaign(sock: Path, seed: int, frames: int, tally: Tally,
                   endings: list[str]) -> None:
    rng = random.Random(seed)
    conns = -(-frames // PER_CONN)
    slots = asyncio.Semaphore(CONNS)

    async def one(k: int) -> None:
        async with slots:
            conn_rng = random.Random(rng.random() + k)
            n = min(PER_CONN, frames - k * PER_CONN)
            await pipeline(sock, conn_rng, k * 10**9, n, tally)
            for j in range(3):
                await short_connection(sock, conn_rng, k * 10**9 + 5 * 10**8 + j * 10**6, tally,
                                       endings)

    await asyncio.gather(*(one(k) for k in range(conns)))


def fuzz(d: RelDaemon, seed: int, frames: int,
         endings: list[str] = ENDINGS) -> tuple[Tally, float, int]:
    """Run the frames, then check the daemon; returns the tally, seconds and fd count."""
    baseline = d.fd_count()
    tally = Tally()
    t0 = time.monotonic()
    try:
        asyncio.run(campaign(d.socket, seed, frames, tally, endings))
    finally:
        seconds = time.monotonic() - t0
        sys.stderr.write(f"\nfuzz SEED={seed}: {tally.frames} frames, {tally.replies} replies, "
                         f"short {dict(tally.short)}, {seconds:.1f}s, "
                         f"{tally.frames / seconds:.0f} frames/s\n")
    asyncio.run(healthy(d))
    return tally, seconds, wait_fds_back(d, baseline)


@pytest.mark.parametrize("loop", LOOPS)
def test_a_million_hostile_frames(tmp_path: Path, loop: str) -> None:
    d = start_fuzz_daemon(tmp_path, loop)
    try:
        tally, _seconds, _fds = fuzz(d, SEED, FRAMES)
        assert tally.frames >= FRAMES  # and each one answered as the oracle says
    finally:
        d.stop_cleanly()


@pytest.mark.skipif(not MUTANTS, reason="WF_FUZZ_MUTANTS=1 runs the fuzzer against its mutants")
@pytest.mark.parametrize("mutant", ["WRONG_CODE", "FD_LEAK"])
def test_fuzz_detects_mutant(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                             mutant: str) -> None:
    monkeypatch.setenv("WF_REL_MUTANT", mutant)
    d = start_fuzz_daemon(tmp_path, "asyncio", {
        "paths": [str(REL_DIR)], "modules": ["rel_workflows", "rel_mutants"]})
    try:
        # A leaked dup also keeps the socket open after the daemon "closes" it, so a huge line
        # would time out waiting for EOF: leave it out so that the fd check is what fails.
        endings = ["vanish", "abandon"] if mutant == "FD_LEAK" else ENDINGS
        with pytest.raises(AssertionError) as caught:
            fuzz(d, SEED, 20_000, endings)
        sys.stderr.write(f"  mutant {mutant} detected: {caught.value!r:.300}\n")
    finally:
        d.stop_cleanly()

