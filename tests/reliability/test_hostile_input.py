"""Hostile socket input (issue 10 item 6, CI variant) against a real daemon, under both event
loops: Hypothesis-generated frames (garbage bytes, truncated, huge and deeply nested lines,
wrong param types, unknown methods, non-object requests, connections that vanish mid-line).

The daemon never dies, answers every well-formed request correctly and every bad one with the
right code, still accepts connections afterwards, and its fd count returns to its baseline ± 2
within 5 s. Plus an fd-exhaustion storm: 2,000 simultaneous connections to a daemon limited to
256 file descriptors.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from orchestrator.api.protocol import METHODS
from orchestrator.client import Client
from tests.reliability.conftest import RelDaemon, wait_fds_back

pytestmark = pytest.mark.slow

MAX_REQUEST = 65536
MIN_FRAMES = 10_000
EXAMPLES = 140  # x about 85 frames each
LOOPS = ["asyncio", "uvloop"]


# --- frames and what the daemon must answer to each ---------------------------------------------


@dataclass(frozen=True)
class Expect:
    """The reply a frame must get: ``code`` None means a result (checked by ``check``)."""

    id: int | None
    code: str | None = None
    field: str | None = None
    check: str | None = None


@dataclass(frozen=True)
class Frame:
    line: bytes  # without the newline
    expect: Expect | None  # None: no reply at all (a blank line)


def _line(obj: Any) -> bytes:
    return orjson.dumps(obj)


def _parses(data: bytes) -> bool:
    try:
        orjson.loads(data)
    except orjson.JSONDecodeError:
        return False
    return True


json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**62), 2**62),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=20),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12,
)
not_str = st.one_of(st.booleans(), st.integers(-(2**62), 2**62), st.floats(allow_nan=False,
                    allow_infinity=False), st.lists(json_scalars, max_size=3),
                    st.dictionaries(st.text(max_size=5), json_scalars, max_size=3))
not_int = st.one_of(st.booleans(), st.floats(allow_nan=False, allow_infinity=False)
                    .filter(lambda f: not f.is_integer()), st.text(max_size=10),
                    st.lists(json_scalars, max_size=3))


@st.composite
def good_request(draw: st.DrawFn, rid: int) -> Frame:
    kind = draw(st.sampled_from(["stats", "workflows", "list", "get", "get_missing", "event"]))
    if kind == "stats":
        return Frame(_line({"id": rid, "method": "stats"}), Expect(rid, check="stats"))
    if kind == "workflows":
        return Frame(_line({"id": rid, "method": "workflows", "params": {}}),
                     Expect(rid, check="workflows"))
    if kind == "list":
        limit = draw(st.integers(1, 10_000))
        return Frame(_line({"id": rid, "method": "list", "params": {"limit": limit}}),
                     Expect(rid, check="list"))
    if kind == "get":
        return Frame(_line({"id": rid, "method": "get", "params": {"run_id": "known"}}),
                     Expect(rid, check="get"))
    if kind == "get_missing":
        run_id = "missing-" + draw(st.text(max_size=30))
        return Frame(_line({"id": rid, "method": "get", "params": {"run_id": run_id}}),
                     Expect(rid, code="NOT_FOUND"))
    depth = draw(st.integers(0, 230))  # orjson encodes at most 254 levels (payload <= 12)
    payload: Any = draw(json_values)
    for _ in range(depth):
        payload = [payload]
    params = {"type": "fuzz-" + draw(st.text(max_size=10)), "payload": payload}
    return Frame(_line({"id": rid, "method": "send_event", "params": params}),
                 Expect(rid, check="event"))


@st.composite
def wrong_params(draw: st.DrawFn, rid: int) -> Frame:
    case = draw(st.integers(0, 8))
    if case == 0:
        params: Any = {"run_id": draw(not_str)}
        method, field = "get", "run_id"
    elif case == 1:
        method, field = "list", "limit"
        params = {"limit": draw(st.one_of(not_int, st.integers(-(2**40), 0)))}
    elif case == 2:
        method, field = "list", "status"
        params = {"status": draw(st.text(max_size=12).filter(lambda s: s not in STATUSES))}
    elif case == 3:
        method, field = "submit", "workflow_id"
        params = {"workflow_id": draw(not_str), "input": draw(json_values)}
    elif case == 4:
        method, field = "submit", "tags"
        params = {"workflow_id": "rel-echo", "input": 1,
                  "tags": draw(st.one_of(st.text(max_size=5), st.lists(not_str, min_size=1,
                                                                        max_size=3)))}
    elif case == 5:
        method, field = "submit", "delay"
        params = {"workflow_id": "rel-echo", "input": 1,
                  "delay": draw(st.one_of(st.sampled_from(["soon", "10 parsecs", ""]),
                                          st.lists(json_scalars, max_size=2)))}
    elif case == 6:
        method = draw(st.sampled_from(["stats", "workflows", "schedules"]))
        field = "bogus_" + draw(st.text("abcxyz", min_size=1, max_size=8))
        params = {field: draw(json_values)}
    elif case == 7:
        method, field = draw(st.sampled_from(sorted(METHODS))), "params"
        params = draw(st.one_of(st.lists(json_scalars, max_size=3), st.integers(-(2**62), 2**62),
                                st.text(max_size=10), st.booleans()))
    else:
        method, field = "send_event", "type"
        params = {"type": draw(not_str), "payload": None}
    return Frame(_line({"id": rid, "method": method, "params": params}),
                 Expect(rid, code="INVALID_PARAMS", field=field))


STATUSES = {"pending", "running", "waiting", "paused", "completed", "failed", "cancelled",
            "compensated", "compensation_failed", "timed_out"}


@st.composite
def frame(draw: st.DrawFn, rid: int) -> Frame:
    kind = draw(st.sampled_from(
        ["good", "good", "good", "wrong", "wrong", "unknown", "garbage", "truncated",
         "non_object", "deep", "bad_id", "bad_method", "blank"]))
    if kind == "good":
        return draw(good_request(rid))
    if kind == "wrong":
        return draw(wrong_params(rid))
    if kind == "unknown":
        method = draw(st.text(max_size=20).filter(lambda m: m not in METHODS and m != "$cancel"))
        return Frame(_line({"id": rid, "method": method, "params": {}}),
                     Expect(rid, code="METHOD_NOT_FOUND"))
    if kind == "garbage":
        data = draw(st.binary(min_size=1, max_size=300)).replace(b"\n", b"")
        data = data if data.strip() and not _parses(data) else b"\xff" + data
        return Frame(data, Expect(None, code="PARSE_ERROR"))
    if kind == "truncated":
        whole = draw(good_request(rid)).line
        cut = draw(st.integers(1, len(whole) - 1))
        return Frame(whole[:cut], Expect(None, code="PARSE_ERROR"))
    if kind == "non_object":
        value = draw(st.one_of(json_scalars, st.lists(json_values, max_size=4)))
        return Frame(_line(value), Expect(None, code="PARSE_ERROR"))
    if kind == "deep":
        opener, closer = draw(st.sampled_from([(b"[", b"]"), (b'{"a":', b"}")]))
        # Past the JSON parser's nesting limit (1024), below max_request_bytes.
        depth = draw(st.integers(1025, (MAX_REQUEST - 200) // len(opener + closer)))
        inner = opener * depth + b"1" + closer * depth
        if draw(st.booleans()):
            inner = b'{"id":%d,"method":"send_event","params":{"type":"t","payload":' % rid + (
                inner + b"}}")
        return Frame(inner, Expect(None, code="PARSE_ERROR"))
    if kind == "bad_id":
        bad = draw(st.one_of(st.booleans(), st.floats(allow_nan=False, allow_infinity=False),
                             st.lists(json_scalars, max_size=2),
                             st.dictionaries(st.text(max_size=3), json_scalars, max_size=2)))
        return Frame(_line({"id": bad, "method": "stats"}), Expect(None, code="PARSE_ERROR"))
    if kind == "bad_method":
        return Frame(_line({"id": rid, "method": draw(not_str)}),
                     Expect(rid, code="PARSE_ERROR"))
    return Frame(draw(st.sampled_from([b"", b" ", b"\t", b"  \r"])), None)


def fast_frame(rng: random.Random, rid: int) -> Frame:
    """One frame of the same families as ``frame``, from a seeded PRNG: Hypothesis is too slow
    to draw every frame (10,000 here, 1M in ``test_fuzz_campaign``)."""
    kind = rng.randrange(15)
    if kind <= 2:
        method, check = rng.choice([("stats", "stats"), ("workflows", "workflows"),
                                    ("list", "list")])
        params: Any = {"limit": rng.randint(1, 5000)} if method == "list" else {}
        return Frame(_line({"id": rid, "method": method, "params": params}),
                     Expect(rid, check=check))
    if kind == 3:
        return Frame(_line({"id": rid, "method": "get",
                            "params": {"run_id": f"missing-{rng.random()}"}}),
                     Expect(rid, code="NOT_FOUND"))
    if kind == 4:
        bad = rng.choice([[1], 7, "x", True])
        return Frame(_line({"id": rid, "method": rng.choice(_SORTED_METHODS), "params": bad}),
                     Expect(rid, code="INVALID_PARAMS", field="params"))
    if kind == 5:
        name = "".join(rng.choice("abcdefgh_$.") for _ in range(rng.randint(0, 12)))
        if name in METHODS or name == "$cancel":
            name += "!"
        return Frame(_line({"id": rid, "method": name}), Expect(rid, code="METHOD_NOT_FOUND"))
    if kind == 6:
        data = b"\xff" + rng.randbytes(rng.randint(1, 200)).replace(b"\n", b"")
        return Frame(data, Expect(None, code="PARSE_ERROR"))
    if kind == 7:
        whole = _line({"id": rid, "method": "list", "params": {"limit": rng.randint(1, 9)}})
        return Frame(whole[: rng.randint(1, len(whole) - 1)], Expect(None, code="PARSE_ERROR"))
    if kind == 8:
        depth = rng.randint(1025, 30_000)
        return Frame(b"[" * depth + b"]" * depth, Expect(None, code="PARSE_ERROR"))
    if kind == 9:
        return Frame(_line({"id": rid, "method": "list",
                            "params": {"limit": rng.choice(["1", 0, -5, 1.5, [2]])}}),
                     Expect(rid, code="INVALID_PARAMS", field="limit"))
    if kind == 10:  # a good event, its payload nested up to orjson's encoding limit
        payload: Any = rng.choice([None, 1, "x", {"k": [1, 2]}])
        for _ in range(rng.randint(0, 240)):
            payload = [payload]
        return Frame(_line({"id": rid, "method": "send_event",
                            "params": {"type": f"fuzz-{rng.random()}", "payload": payload}}),
                     Expect(rid, check="event"))
    if kind == 11:
        return Frame(_line(rng.choice([1, "s", None, [1, {"id": rid}], True])),
                     Expect(None, code="PARSE_ERROR"))
    if kind == 12:
        return Frame(_line({"id": rng.choice([True, 1.5, [rid], {"a": 1}]), "method": "stats"}),
                     Expect(None, code="PARSE_ERROR"))
    if kind == 13:
        return Frame(_line({"id": rid, "method": rng.choice([1, None, ["stats"], {"m": 1}])}),
                     Expect(rid, code="PARSE_ERROR"))
    return Frame(rng.choice([b"", b" ", b"\t", b"  \r"]), None)


_SORTED_METHODS = sorted(METHODS)


def fast_frames(rng: random.Random, base: int, n: int) -> list[Frame]:
    return [fast_frame(rng, base + 500 + i) for i in range(n)]


@st.composite
def connection_plan(draw: st.DrawFn) -> tuple[list[Frame], str]:
    base = draw(st.integers(0, 2**40)) * 1000
    n = draw(st.integers(5, 15))
    frames = [draw(frame(base + i)) for i in range(n)]
    rng = random.Random(draw(st.integers(0, 2**32)))
    frames += fast_frames(rng, base, draw(st.integers(50, 110)))
    rng.shuffle(frames)
    ending = draw(st.sampled_from(["close", "close", "vanish", "abandon", "huge"]))
    if ending == "abandon":
        # Requests that read through a storage snapshot (stats, get) and are cancelled by the
        # peer's disappearance wedge the daemon's read pool: the read-pool regression below
        # below. Left out here so the rest of the fuzzing keeps its meaning.
        frames = [f for f in frames if f.expect is None or (
            f.expect.check not in SNAPSHOT_READS and b'"method":"get"' not in f.line)]
    return frames, ending


SNAPSHOT_READS = {"stats", "get"}


# --- talking to the daemon -----------------------------------------------------------------------


def check_result(check: str, result: Any) -> None:
    if check == "stats":
        assert "runs" in result and "actors" in result, result
    elif check == "workflows":
        assert "rel-echo" in {w["id"] for w in result["workflows"]}, result
    elif check == "list":
        assert isinstance(result["runs"], list)
    elif check == "get":
        assert result["run_id"] == "known" and result["status"] == "completed", result
    elif check == "event":
        assert result["resolved"] == 0 and result["event_id"], result
    else:
        raise AssertionError(check)


def check_reply(reply: dict[str, Any], want: Expect) -> None:
    """The oracle: ``reply`` is what ``want`` says the daemon must answer."""
    if want.code is None:
        assert "result" in reply, (want, reply)
        check_result(want.check or "", reply["result"])
    else:
        assert "error" in reply, (want, reply)
        assert reply["error"]["code"] == want.code, (want, reply)
        if want.field is not None:
            assert reply["error"]["data"]["field"] == want.field, (want, reply)


async def run_plan(sock: Path, frames: list[Frame], ending: str) -> None:
    reader, writer = await asyncio.open_unix_connection(str(sock), limit=2**22)
    try:
        writer.write(b"".join(f.line + b"\n" for f in frames))
        if ending == "abandon":  # gone without reading a single reply, mid-line
            writer.write(b'{"id": 1, "method": "sta')
            writer.transport.abort()
            return
        await writer.drain()
        expected = {f.expect.id: f.expect for f in frames
                    if f.expect is not None and f.expect.id is not None}
        anonymous = Counter(f.expect.code for f in frames
                            if f.expect is not None and f.expect.id is None)
        got_anonymous: Counter[str] = Counter()
        for _ in range(len(expected) + sum(anonymous.values())):
            line = await asyncio.wait_for(reader.readline(), 10)
            assert line.endswith(b"\n"), f"connection closed early: {line!r}"
            reply = orjson.loads(line)
            if reply["id"] is None:
                got_anonymous[reply["error"]["code"]] += 1
                continue
            check_reply(reply, expected.pop(reply["id"]))
        assert not expected
        assert got_anonymous == anonymous
        if ending == "vanish":
            writer.write(b'{"id": 99, "method": "stats", "par')
            await writer.drain()
            writer.transport.abort()
        elif ending == "huge":
            head = b'{"id":1,"method":"submit","params":{"workflow_id":"rel-echo","input":"'
            writer.write(head + b"x" * (MAX_REQUEST * 2) + b'"}}\n')
            line = await asyncio.wait_for(reader.readline(), 10)
            reply = orjson.loads(line)
            assert reply["error"]["code"] == "REQUEST_TOO_LARGE", reply
            assert await asyncio.wait_for(reader.read(), 10) == b""  # closed by the daemon
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def known_run(sock: Path) -> None:
    async with Client.connect(sock) as c:
        await c.submit("rel-echo", {"hello": 1}, run_id="known")
        assert (await c.wait("known", timeout=10))["status"] == "completed"


async def healthy(d: RelDaemon) -> None:
    assert d.alive(), f"daemon died\n{d.new_log()[-3000:]}"
    async with Client.connect(d.socket) as c:
        run = await c.submit("rel-echo", {"after": True})
        assert (await c.wait(run["run_id"], timeout=10))["status"] == "completed"


def start_fuzz_daemon(root: Path, loop: str,
                      workflows: dict[str, Any] | None = None) -> RelDaemon:
    """A daemon on event loop ``loop`` (skips when uvloop is missing), checked to run it."""
    if loop == "uvloop":
        pytest.importorskip("uvloop")
    overrides: dict[str, dict[str, Any]] = {
        "daemon": {"event_loop": loop, "max_request_bytes": MAX_REQUEST}}
    if workflows is not None:
        overrides["workflows"] = workflows
    d = RelDaemon(root, overrides)
    d.start()
    ready = next(r for r in d.log_records() if r["event"] == "daemon.ready")
    assert ready["event_loop"] == loop
    return d


@pytest.fixture(scope="module", params=LOOPS)
def fuzz_daemon(request: pytest.FixtureRequest,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelDaemon]:
    d = start_fuzz_daemon(tmp_path_factory.mktemp(f"fuzz-{request.param}"), request.param)
    yield d
    d.stop_cleanly()


def test_fuzzed_frames_never_hurt_the_daemon(fuzz_daemon: RelDaemon) -> None:
    d = fuzz_daemon
    asyncio.run(known_run(d.socket))
    baseline = d.fd_count()
    frames_sent = 0

    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              phases=(Phase.explicit, Phase.generate),
              suppress_health_check=list(HealthCheck))
    @given(plan=connection_plan())
    def one_connection(plan: tuple[list[Frame], str]) -> None:
        nonlocal frames_sent
        frames, ending = plan
        asyncio.run(run_plan(d.socket, frames, ending))
        frames_sent += len(frames) + (ending != "close")

    one_connection()
    assert frames_sent >= MIN_FRAMES
    asyncio.run(healthy(d))
    wait_fds_back(d, baseline)


# Regression (fixed): storage/sqlite/storage.py _Readers.snapshot: a read cancelled during its
# BEGIN, queries or COMMIT (a client that disconnects with a stats/get in flight) returns the
# pooled connection with its read transaction still open; every later stats/get fails INTERNAL
# 'cannot start a transaction within a transaction' and other reads see a frozen snapshot


def test_clients_vanishing_with_reads_in_flight_do_not_wedge_reads(
    make_rel_daemon: Callable[..., RelDaemon],
) -> None:
    d = make_rel_daemon()

    async def vanish_with_reads_in_flight(round_: int) -> None:
        _reader, writer = await asyncio.open_unix_connection(str(d.socket))
        for i in range(20):
            method = "stats" if i % 2 else "get"
            writer.write(_line({"id": i, "method": method, "params":
                                {"run_id": "known"} if method == "get" else {}}) + b"\n")
        await writer.drain()
        for _ in range(round_ % 4):
            await asyncio.sleep(0)
        writer.transport.abort()

    async def scenario() -> None:
        await known_run(d.socket)
        await asyncio.gather(*(vanish_with_reads_in_flight(i) for i in range(40)))
        async with Client.connect(d.socket) as c:
            for _ in range(4):  # every pooled read connection gets used
                assert "runs" in await c.stats()
                assert (await c.get("known"))["status"] == "completed"
            run = await c.submit("rel-echo", {"fresh": True})
            await c.wait(run["run_id"], timeout=10)
            assert (await c.get(run["run_id"]))["status"] == "completed"

    asyncio.run(scenario())


# Regression (fixed): a payload/input nested 255..1024 levels deep parses (orjson.loads allows
# 1024) but Orchestrator._check_size's orjson.dumps raises JSONEncodeError (limit 254), which the
# server reports as INTERNAL instead of INVALID_PARAMS naming the field


@pytest.mark.parametrize(("method", "field"), [("send_event", "payload"), ("submit", "input")])
def test_deep_but_parseable_payload_is_invalid_params(
    fuzz_daemon: RelDaemon, method: str, field: str
) -> None:
    deep = b"[" * 300 + b"1" + b"]" * 300  # orjson parses 1024 levels, encodes only 254
    params = (b'{"type":"t","payload":%s}' if method == "send_event"
              else b'{"workflow_id":"rel-echo","input":%s}') % deep

    async def ask() -> Any:
        reader, writer = await asyncio.open_unix_connection(str(fuzz_daemon.socket))
        writer.write(b'{"id":1,"method":"%s","params":%s}\n' % (method.encode(), params))
        reply = orjson.loads(await asyncio.wait_for(reader.readline(), 10))
        writer.close()
        return reply

    reply = asyncio.run(ask())
    assert reply["error"]["code"] == "INVALID_PARAMS", reply
    assert reply["error"]["data"]["field"] == field


# --- fd exhaustion ------------------------------------------------------------------------------

STORM = 2000
NOFILE = 256


# Regression (fixed): under the asyncio loop a daemon at its fd limit wedges for good: CPython
# 3.11 BaseSelectorEventLoop._accept_connection does not stop its `for _ in range(backlog)` loop
# on EMFILE, so every wake-up logs up to backlog (2048, server.py) tracebacks and schedules as
# many _start_serving retries; fds stay at the limit, fresh clients time out


@pytest.mark.parametrize("loop", [
    "asyncio",
    "uvloop",
])
async def test_fd_exhaustion_storm(tmp_path: Path, loop: str) -> None:
    if loop == "uvloop":
        pytest.importorskip("uvloop")
    d = RelDaemon(tmp_path, {"daemon": {"event_loop": loop}}, nofile=NOFILE)
    d.start()
    try:
        await known_run(d.socket)
        baseline = d.fd_count()
        assert os.sysconf("SC_OPEN_MAX") >= STORM + 100, "the test process needs more fds"

        async def one() -> str:
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_unix_connection(str(d.socket)), 4)
            except (OSError, TimeoutError) as exc:
                return f"connect:{type(exc).__name__}"
            try:
                writer.write(b'{"id": 1, "method": "stats"}\n')
                line = await asyncio.wait_for(reader.readline(), 4)
                return "served" if b'"result"' in line else "no-reply"
            except (OSError, TimeoutError) as exc:
                return f"io:{type(exc).__name__}"
            finally:
                writer.transport.abort()

        outcomes = Counter(await asyncio.gather(*(one() for _ in range(STORM))))
        assert d.alive(), f"daemon died in the storm {outcomes}\n{d.new_log()[-3000:]}"
        assert outcomes["served"] > 0, outcomes
        await asyncio.wait_for(healthy(d), 5)
        await asyncio.to_thread(wait_fds_back, d, baseline)
    finally:
        if d.proc is not None and d.proc.poll() is None and d.fd_count() >= NOFILE - 1:
            d.kill()  # wedged: it cannot even be stopped in time
        elif d.proc is not None:
            d.stop_cleanly()
