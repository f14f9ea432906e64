"""Helpers shared by the benchmark sides: percentiles, progress on stderr, process RSS."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any


def pct(values: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile (``p`` in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def summary_ms(values: Sequence[float]) -> dict[str, Any]:
    """p50/p99/max of durations given in seconds, in milliseconds."""
    def ms(v: float | None) -> float | None:
        return None if v is None else round(v * 1000, 3)

    return {
        "n": len(values),
        "p50_ms": ms(pct(values, 50)),
        "p99_ms": ms(pct(values, 99)),
        "max_ms": ms(max(values) if values else None),
    }


def say(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


@contextlib.asynccontextmanager
async def progress(label: str, count: Callable[[], str], every: float = 2.0) -> AsyncIterator[None]:
    """Print ``label: count()`` on stderr every ``every`` seconds while the block runs."""
    async def loop() -> None:
        start = time.perf_counter()
        while True:
            await asyncio.sleep(every)
            say(f"  {label}: {count()} ({time.perf_counter() - start:.0f} s)")

    task = asyncio.create_task(loop())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def rss_mb(pid: int | None = None) -> float:
    """VmRSS of a process from /proc, in MB (10^6 bytes)."""
    with open(f"/proc/{pid or os.getpid()}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024 / 1e6
    raise RuntimeError("no VmRSS")


def threads(pid: int | None = None) -> int:
    with open(f"/proc/{pid or os.getpid()}/status") as fh:
        for line in fh:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    return 0


async def gather_limited(coros: Sequence[Any], limit: int) -> list[Any]:
    """``asyncio.gather`` with at most ``limit`` coroutines in flight."""
    sem = asyncio.Semaphore(limit)

    async def one(c: Any) -> Any:
        async with sem:
            return await c

    return await asyncio.gather(*(one(c) for c in coros))


async def paced(count: int, per_s: float, send: Callable[[int], Awaitable[None]]) -> None:
    """Call ``send(i)`` for i < count at a fixed rate, open loop (a slow reply does not delay
    the next send): the latency of one event at a time rather than of a queue of 1000."""
    loop = asyncio.get_running_loop()
    start = loop.time()

    async def at(i: int) -> None:
        await asyncio.sleep(max(0.0, start + i / per_s - loop.time()))
        await send(i)

    await asyncio.gather(*(at(i) for i in range(count)))


async def steps_burst(n: int, k: int, one_run: Callable[[], Awaitable[None]]) -> dict[str, Any]:
    """W1 for either side: ``n`` runs of ``k`` steps at once; throughput and run latency."""
    latencies: list[float] = []

    async def one() -> None:
        t0 = time.perf_counter()
        await one_run()
        latencies.append(time.perf_counter() - t0)

    start = time.perf_counter()
    async with progress("W1 runs done", lambda: f"{len(latencies)}/{n}"):
        await asyncio.gather(*(one() for _ in range(n)))
    elapsed = time.perf_counter() - start
    return {
        "n": n, "k": k, "seconds": round(elapsed, 3),
        "steps_per_s": round(n * k / elapsed, 1), "runs_per_s": round(n / elapsed, 1),
        "latency": summary_ms(latencies),
    }


async def sequential_steps(
    ks: Sequence[int], one_run: Callable[[int], Awaitable[None]]
) -> dict[str, Any]:
    """W4 for either side: one run of ``k`` sequential steps per ``k``; per-step cost."""
    out: dict[str, Any] = {"ks": {}}
    for k in ks:
        t0 = time.perf_counter()
        await one_run(k)
        elapsed = time.perf_counter() - t0
        out["ks"][str(k)] = {"seconds": round(elapsed, 4),
                             "ms_per_step": round(elapsed / k * 1000, 4)}
        say(f"  W4 k={k}: {elapsed:.2f} s ({elapsed / k * 1000:.3f} ms/step)")
    if "1000" in out["ks"] and "10000" in out["ks"]:
        out["ratio_10k_1k"] = round(
            out["ks"]["10000"]["seconds"] / out["ks"]["1000"]["seconds"], 2)
    return out
