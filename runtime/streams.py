"""``ctx.stream``: drain a source, record each chunk durably and publish it live.

The source is iterated on the host loop (it is I/O), in one host job with the commits of its
chunks; the body waits for the assembled result.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterable, Callable
from typing import Any

from runtime import errors, serialization
from runtime._state import HostJob, RunState
from runtime.journal import StreamChunk, StreamEncoding

Source = AsyncIterable[Any] | Callable[[], AsyncIterable[Any]]


def _encode(stream_id: str, encoding: StreamEncoding, item: Any) -> Any:
    if encoding == "text":
        if not isinstance(item, str):
            raise TypeError(f"stream {stream_id!r}: text chunks must be str, got {type(item)}")
        return item
    if encoding == "base64":
        if not isinstance(item, bytes | bytearray | memoryview):
            raise TypeError(f"stream {stream_id!r}: bytes chunks must be bytes, got {type(item)}")
        return base64.b64encode(bytes(item)).decode("ascii")
    return serialization.round_trip(item, what=f"stream {stream_id!r} chunk")


def _assemble(encoding: StreamEncoding, chunks: list[Any]) -> Any:
    if encoding == "text":
        return "".join(chunks)
    if encoding == "base64":
        return b"".join(base64.b64decode(c) for c in chunks)
    return chunks


async def run_stream(
    ex: RunState, stream_id: str, source: Source, encoding: StreamEncoding
) -> Any:
    if stream_id in ex.streams_seen:
        raise errors.FatalError(
            f"stream id {stream_id!r} was used twice in run {ex.facts.run_id}",
            code="DUPLICATE_STREAM_ID",
            data={"stream_id": stream_id},
        )
    ex.streams_seen.add(stream_id)
    recorded = ex.journal.streams.get(stream_id, [])
    if recorded and recorded[-1].final:
        # Completed before: never iterate the source again (it may bill or have side effects).
        return _assemble(encoding, [c.chunk for c in recorded if not c.final])
    ex.check_live()
    return await ex.on_host(_drain, ex, stream_id, source, encoding, len(recorded))


async def _drain(
    job: HostJob, ex: RunState, stream_id: str, source: Source, encoding: StreamEncoding,
    recorded: int,
) -> Any:
    """On the host: iterate the source, committing each chunk not recorded before a crash."""
    iterable = source() if callable(source) else source
    chunks: list[Any] = []
    seq = 0
    async for item in iterable:
        value = _encode(stream_id, encoding, item)
        chunks.append(value)
        if seq >= recorded:  # chunks recorded before a crash are kept as they are
            now = ex.host.clock.now()
            await _emit(job, ex, StreamChunk(stream_id, seq, encoding, value, False, now))
        seq += 1
    await _emit(job, ex, StreamChunk(stream_id, seq, encoding, None, True, ex.host.clock.now()))
    return _assemble(encoding, chunks)


async def _emit(job: HostJob, ex: RunState, chunk: StreamChunk) -> None:
    interruptible = job.interruptible
    job.hold()  # a commit under way is never cancelled
    try:
        await ex.record_on_host(chunk)
    finally:
        job.interruptible = interruptible
    ex.check_live()  # a cancel that came during the commit: stop draining here
    if ex.host.publish is not None:
        ex.host.publish(chunk)


class StreamApi:
    """``await ctx.stream(id, source)``, or ``.text`` / ``.json`` / ``.bytes`` for typed chunks."""

    def __init__(self, ex: RunState) -> None:
        self._ex = ex

    async def __call__(self, stream_id: str, source: Source) -> list[Any]:
        result: list[Any] = await run_stream(self._ex, stream_id, source, "json")
        return result

    async def text(self, stream_id: str, source: Source) -> str:
        result: str = await run_stream(self._ex, stream_id, source, "text")
        return result

    async def json(self, stream_id: str, source: Source) -> list[Any]:
        result: list[Any] = await run_stream(self._ex, stream_id, source, "json")
        return result

    async def bytes(self, stream_id: str, source: Source) -> bytes:
        result: bytes = await run_stream(self._ex, stream_id, source, "base64")
        return result
