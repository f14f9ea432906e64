"""The DBOS Transact side of the benchmarks: async API, SQLite system database.

Used as the DBOS documentation shows: ``DBOS(config=...)`` then ``DBOS.launch()``, workflows
``@DBOS.workflow()`` started with ``DBOS.start_workflow_async`` (they run on the caller's event
loop), steps ``@DBOS.step()``, ``DBOS.sleep_async``, ``DBOS.recv_async`` / ``DBOS.send_async``.
Defaults, except ``log_level`` (WARNING, so progress stays readable; DBOS logs no per-workflow
lines at INFO either). "tuned" sets ``notification_listener_polling_interval_sec``.

W5 runs in two child processes: one parks N workflows and is killed (as a crash), the next
launches DBOS on the same database and recovers them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from dbos import DBOS, DBOSConfig

from bench.common import (
    paced,
    progress,
    rss_mb,
    say,
    sequential_steps,
    steps_burst,
    summary_ms,
    threads,
)

PARKED = 0  # workflows that reached recv (incremented again when recovery replays them)


@DBOS.step()
async def noop_step(i: int) -> int:
    return i


@DBOS.step()
async def now_step() -> float:
    return time.time()


@DBOS.workflow()
async def steps_wf(k: int) -> int:
    for i in range(k):
        await noop_step(i)
    return k


@DBOS.workflow()
async def sleep_wf(seconds: float) -> float:
    await DBOS.sleep_async(seconds)
    return await now_step()


@DBOS.workflow()
async def recv_wf() -> float:
    global PARKED
    PARKED += 1
    await DBOS.recv_async("bench", timeout_seconds=3600)
    return await now_step()


@DBOS.workflow()
async def long_wait_wf(k: int, r: int) -> list[float]:
    global PARKED
    for i in range(k):
        await noop_step(i)
    out: list[float] = []
    for _ in range(r):
        PARKED += 1
        await DBOS.recv_async("bench", timeout_seconds=3600)
        out.append(await now_step())
    return out


def launch(url: str, poll: float | None) -> dict[str, Any]:
    """Launch DBOS on ``url`` (``sqlite:///file`` or, for W7, ``postgresql://...``)."""
    config: DBOSConfig = {
        "name": "wfbench",
        "system_database_url": url,
        "log_level": "WARNING",
    }
    if poll is not None:
        config["notification_listener_polling_interval_sec"] = poll
    DBOS(config=config)
    DBOS.launch()
    return pragmas()


def pragmas() -> dict[str, Any]:
    """The pragmas of a connection DBOS itself uses for its system database."""
    from dbos._dbos import _get_dbos_instance

    engine = _get_dbos_instance()._sys_db.engine
    if engine.dialect.name == "postgresql":
        with engine.connect() as c:
            return {"synchronous_commit": c.exec_driver_sql("SHOW synchronous_commit").scalar(),
                    "fsync": c.exec_driver_sql("SHOW fsync").scalar()}
    with engine.connect() as c:
        sync = c.exec_driver_sql("PRAGMA synchronous").scalar()
        mode = c.exec_driver_sql("PRAGMA journal_mode").scalar()
    names = {0: "off", 1: "normal", 2: "full", 3: "extra"}
    return {"synchronous": names.get(int(sync), sync), "journal_mode": mode}


async def wait_parked(n: int, label: str, timeout: float = 900.0) -> float:
    t0 = time.perf_counter()
    async with progress(f"{label} parked", lambda: f"{PARKED}/{n}"):
        while n > PARKED:
            if time.perf_counter() - t0 > timeout:
                raise TimeoutError(f"{label}: only {PARKED}/{n} parked")
            await asyncio.sleep(0.01)
    await asyncio.sleep(0.5)  # let the last recv register
    return time.perf_counter() - t0


async def start_all(fn: Any, args: list[tuple[Any, ...]], label: str) -> list[Any]:
    done = 0

    async def one(a: tuple[Any, ...]) -> Any:
        nonlocal done
        h = await DBOS.start_workflow_async(fn, *a)
        done += 1
        return h

    async with progress(f"{label} started", lambda: f"{done}/{len(args)}"):
        return list(await asyncio.gather(*(one(a) for a in args)))


async def results_all(handles: list[Any], label: str) -> list[Any]:
    done = 0

    async def one(h: Any) -> Any:
        nonlocal done
        r = await h.get_result()
        done += 1
        return r

    async with progress(f"{label} finished", lambda: f"{done}/{len(handles)}"):
        return list(await asyncio.gather(*(one(h) for h in handles)))


# --- workloads -------------------------------------------------------------------------------


async def warm_up() -> None:
    hs = [await DBOS.start_workflow_async(steps_wf, 10) for _ in range(5)]
    for h in hs:
        await h.get_result()


async def w1(p: dict[str, Any]) -> dict[str, Any]:
    n, k = p["n"], p["k"]
    await warm_up()

    async def one_run() -> None:
        h = await DBOS.start_workflow_async(steps_wf, k)
        await h.get_result()

    return await steps_burst(n, k, one_run)


async def w2(p: dict[str, Any]) -> dict[str, Any]:
    n, seconds = p["n"], p["seconds"]
    await warm_up()
    t0 = time.perf_counter()
    handles = await start_all(sleep_wf, [(seconds,)] * n, "W2")
    submit_s = time.perf_counter() - t0
    woke = await results_all(handles, "W2")
    lateness: list[float] = []
    for h, t in zip(handles, woke, strict=True):
        steps = await DBOS.list_workflow_steps_async(h.get_workflow_id())
        due = next(s["output"] for s in steps if "sleep" in s["function_name"])
        lateness.append(float(t) - float(due))
    return {"n": n, "sleep_s": seconds, "submit_seconds": round(submit_s, 3),
            "lateness": summary_ms(lateness), "min_lateness_ms": round(min(lateness) * 1000, 3)}


async def w3(p: dict[str, Any]) -> dict[str, Any]:
    n, m, rate = p["n"], p["paced"], p["paced_per_s"]
    await warm_up()
    t0 = time.perf_counter()
    handles = await start_all(recv_wf, [()] * (n + m), "W3")
    park_s = await wait_parked(n + m, "W3") + (time.perf_counter() - t0)
    sent = [0.0] * (n + m)

    async def send(i: int) -> None:
        sent[i] = time.time()
        await DBOS.send_async(handles[i].get_workflow_id(), {"i": i}, "bench")

    # As on our side: the last m runs one message at a time, then the first n all at once.
    await paced(m, rate, lambda i: send(n + i))
    paced_outs = await results_all(handles[n:], "W3 paced")
    t1 = time.perf_counter()
    await asyncio.gather(*(send(i) for i in range(n)))
    send_s = time.perf_counter() - t1
    outs = await results_all(handles[:n], "W3")
    lat = [float(o) - sent[i] for i, o in enumerate(outs)]
    paced_lat = [float(o) - sent[n + i] for i, o in enumerate(paced_outs)]
    return {"n": n, "park_seconds": round(park_s, 3), "send_seconds": round(send_s, 3),
            "event_to_resume": summary_ms(lat), "paced_per_s": rate,
            "paced_event_to_resume": summary_ms(paced_lat)}


async def w4(p: dict[str, Any]) -> dict[str, Any]:
    global PARKED
    await warm_up()

    async def one_run(k: int) -> None:
        h = await DBOS.start_workflow_async(steps_wf, k)
        await h.get_result()

    out = await sequential_steps(p["ks"], one_run)
    r = p["resumes"]
    out["resume"] = {}
    for k in p["resume_ks"]:
        PARKED = 0
        h = await DBOS.start_workflow_async(long_wait_wf, k, r)
        sends: list[float] = []
        for i in range(r):
            while i + 1 > PARKED:
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.3)
            sends.append(time.time())
            await DBOS.send_async(h.get_workflow_id(), {}, "bench")
        outs = await h.get_result()
        out["resume"][str(k)] = summary_ms(
            [float(x) - t for x, t in zip(outs, sends, strict=True)])
        say(f"  W4 resume after {k} steps: p50 {out['resume'][str(k)]['p50_ms']} ms")
    return out


async def w5_park(p: dict[str, Any]) -> dict[str, Any]:
    n = p["n"]
    rss0 = rss_mb()
    t0 = time.perf_counter()
    handles = await start_all(recv_wf, [()] * n, "W5")
    park_s = await wait_parked(n, "W5") + (time.perf_counter() - t0)
    await asyncio.sleep(1.0)
    rss = rss_mb()
    Path(p["ids_file"]).write_text(json.dumps([h.get_workflow_id() for h in handles]))
    return {"n": n, "park_seconds": round(park_s, 2), "parks_per_s": round(n / park_s, 1),
            "rss_idle_mb": round(rss0, 1), "rss_parked_mb": round(rss, 1),
            "kb_per_parked_run": round((rss - rss0) * 1000 / n, 2), "threads": threads()}


async def w5_recover(p: dict[str, Any]) -> dict[str, Any]:
    n = p["n"]
    ids = json.loads(Path(p["ids_file"]).read_text())
    await wait_parked(n, "W5 recovered")
    ready = time.time() - 0.5 - p["spawned_at"]  # from process spawn, as for our daemon
    rss = rss_mb()
    t1 = time.perf_counter()
    done = 0

    async def send(wid: str) -> None:
        nonlocal done
        await DBOS.send_async(wid, {}, "bench")
        done += 1

    async with progress("W5 sent", lambda: f"{done}/{n}"):
        await asyncio.gather(*(send(w) for w in ids))
    handles = [await DBOS.retrieve_workflow_async(w) for w in ids]
    await results_all(handles, "W5 drain")
    drain = time.perf_counter() - t1
    return {"restart_to_ready_s": round(ready, 3), "rss_after_restart_mb": round(rss, 1),
            "drain_seconds": round(drain, 2), "drain_runs_per_s": round(n / drain, 1)}


WORKLOADS = {"W1": w1, "W2": w2, "W3": w3, "W4": w4, "W5park": w5_park, "W5recover": w5_recover}


def _child(workload: str, params: dict[str, Any], poll: float | None) -> dict[str, Any]:
    t0 = time.perf_counter()
    result: dict[str, Any] = {}

    async def main() -> None:
        nonlocal result
        url = params.get("pg_url") or f"sqlite:///{params['db']}"
        result["pragmas"] = launch(url, poll)
        params["launch_seconds"] = time.perf_counter() - t0
        result.update(await WORKLOADS[workload](params))
        if workload == "W5park":
            # A crash while the workflows are parked: no shutdown, no task cancellation.
            print(json.dumps(result), flush=True)
            os._exit(0)

    asyncio.run(main())
    return result


def run_cell(workload: str, params: dict[str, Any], poll: float | None) -> dict[str, Any]:
    """One cell; this process is the DBOS application (W5: its two children are)."""
    if "pg_url" in params:  # W7: DBOS on PostgreSQL, its native backend
        result = _child(workload, params, poll)
        with contextlib.suppress(Exception):
            DBOS.destroy()
        return result
    if "db" in params:  # a W5 child
        result = _child(workload, params, poll)
        print(json.dumps(result), flush=True)
        os._exit(0)  # as a crash: no DBOS.destroy(), parked workflows stay PENDING
    with tempfile.TemporaryDirectory(prefix="wfbench-dbos-") as tmp:
        db = Path(tmp) / "dbos.sqlite"
        if workload != "W5":
            result = _child(workload, {**params, "db": str(db)}, poll)
            with contextlib.suppress(Exception):
                DBOS.destroy()
            result["polling_interval_s"] = poll if poll is not None else 1.0
            return result
        child = {**params, "db": str(db), "ids_file": str(Path(tmp) / "ids.json")}
        side = "dbos-tuned" if poll is not None else "dbos-default"
        parked = _spawn(side, "W5park", child)
        t0 = time.perf_counter()
        child["spawned_at"] = time.time()
        recovered = _spawn(side, "W5recover", child)
        recovered["restart_wall_s"] = round(time.perf_counter() - t0, 2)
        return {**parked, **recovered, "polling_interval_s": poll if poll is not None else 1.0}


def _spawn(side: str, workload: str, params: dict[str, Any]) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "bench.run", "--cell", f"{side}:{workload}",
           "--params", json.dumps(params)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=900)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    lines = [ln for ln in out.decode().splitlines() if ln.startswith("{")]
    if not lines:
        raise RuntimeError(f"DBOS {workload} child failed (exit {proc.returncode})")
    return dict(json.loads(lines[-1]))
