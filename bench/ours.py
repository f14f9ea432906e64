"""Our engine's side of the benchmarks: through the real daemon and socket, and embedded.

Every workload takes a *service* with the Service methods (``submit``, ``wait``, ``get``,
``send_event``, ``stats``): an ``orchestrator.client.Client`` connected to a ``wf daemon``
subprocess, or an in-process ``orchestrator.Orchestrator``. Same code for both.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import (
    gather_limited,
    paced,
    progress,
    rss_mb,
    say,
    sequential_steps,
    steps_burst,
    summary_ms,
    threads,
)

REPO = Path(__file__).resolve().parent.parent
SYNCHRONOUS = "full"

CONFIG = """\
[daemon]
socket = "./wf.sock"
event_loop = "uvloop"

[storage]
path = "./wf.db"
synchronous = "{synchronous}"

[workflows]
paths = ["{repo}"]
modules = ["bench.bench_workflows"]

[logging]
level = "info"
format = "json"
file = "./daemon.log"
"""


HTTP = os.environ.get("WF_BENCH_HTTP") == "1"
HTTP_CONFIG = """
[http]
listen = "127.0.0.1:0"
token = "bench"
"""


def write_config(directory: Path) -> Path:
    path = directory / "config.toml"
    text = CONFIG.format(synchronous=SYNCHRONOUS, repo=REPO)
    path.write_text(text + (HTTP_CONFIG if HTTP else ""))
    return path


async def follow_changes(log: Path, seen: list[int]) -> None:
    """An open dashboard: one SSE client on ``changes`` for the whole workload."""
    import httpx
    import orjson

    ready = next(orjson.loads(line) for line in log.read_text().splitlines()
                 if '"daemon.ready"' in line)
    async with httpx.AsyncClient(base_url=ready["http"], timeout=None,
                                 headers={"Authorization": "Bearer bench"}) as c, \
            c.stream("GET", "/api/v1/changes") as r:
        async for line in r.aiter_lines():
            if line.startswith("data: "):
                seen[0] += 1


class Daemon:
    """A ``wf daemon`` subprocess on a bench config; ``start`` returns once it logged ready."""

    def __init__(self, config: Path) -> None:
        self.config = config
        self.log = config.parent / "daemon.log"
        self.socket = config.parent / "wf.sock"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 600.0) -> float:
        """Spawn the daemon; return seconds from spawn to its ``daemon.ready`` log line."""
        offset = self.log.stat().st_size if self.log.exists() else 0
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "orchestrator", "daemon", "--config", str(self.config)],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
        )
        deadline = t0 + timeout
        while time.perf_counter() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited with {self.proc.returncode} before ready")
            if self.log.exists():
                with self.log.open("rb") as fh:
                    fh.seek(offset)
                    if b"daemon.ready" in fh.read():
                        return time.perf_counter() - t0
            time.sleep(0.002)
        raise TimeoutError("daemon not ready")

    def stop(self, timeout: float = 120.0) -> float:
        """SIGTERM and wait; return the seconds it took to exit (SIGKILL after ``timeout``)."""
        if self.proc is None or self.proc.poll() is not None:
            return 0.0
        t0 = time.perf_counter()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            say("  daemon did not stop after SIGTERM; killing it")
            self.proc.kill()
            self.proc.wait()
        return time.perf_counter() - t0


# --- helpers ---------------------------------------------------------------------------------


async def warm_up(svc: Any, n: int = 20) -> None:
    runs = await asyncio.gather(*(svc.submit("bench-steps", {"k": 10}) for _ in range(n)))
    await asyncio.gather(*(svc.wait(r["run_id"], timeout=60) for r in runs))


async def wait_waiting(svc: Any, n: int, label: str, timeout: float = 900.0) -> float:
    """Poll ``stats`` until at least ``n`` runs are ``waiting``; return the seconds it took."""
    t0 = time.perf_counter()
    waiting = 0
    last = 0.0
    while waiting < n:
        if time.perf_counter() - t0 > timeout:
            raise TimeoutError(f"{label}: only {waiting}/{n} runs parked")
        await asyncio.sleep(0.01)
        stats = await svc.stats()
        waiting = int(stats["runs"].get("waiting", 0))
        if time.perf_counter() - last > 2:
            last = time.perf_counter()
            say(f"  {label}: {waiting}/{n} parked")
    return time.perf_counter() - t0


async def until_waiting_on(svc: Any, run_id: str, event_type: str) -> None:
    """Poll ``get`` until the run is parked on a waiting EVENT waitpoint of ``event_type``."""
    for _ in range(6000):
        detail = await svc.get(run_id)
        if detail["status"] == "waiting" and any(
            w["event_type"] == event_type and w["status"] == "waiting"
            for w in detail["waitpoints"]
        ):
            return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"run {run_id} never parked on {event_type}")


async def submit_all(svc: Any, workflow_id: str, inputs: list[Any], label: str) -> list[str]:
    done = 0

    async def one(inp: Any) -> str:
        nonlocal done
        run = await svc.submit(workflow_id, inp)
        done += 1
        return str(run["run_id"])

    async with progress(f"{label} submitted", lambda: f"{done}/{len(inputs)}"):
        return await gather_limited([one(i) for i in inputs], 2000)


async def wait_all(svc: Any, run_ids: list[str], label: str) -> list[dict[str, Any]]:
    done = 0

    async def one(run_id: str) -> dict[str, Any]:
        nonlocal done
        run: dict[str, Any] = await svc.wait(run_id, timeout=900)
        done += 1
        return run

    async with progress(f"{label} finished", lambda: f"{done}/{len(run_ids)}"):
        runs = await gather_limited([one(r) for r in run_ids], 20000)
    bad = [r for r in runs if r["status"] != "completed"]
    if bad:
        raise RuntimeError(f"{label}: {len(bad)} runs not completed, e.g. {bad[0]}")
    return runs


# --- workloads -------------------------------------------------------------------------------


async def w1(svc: Any, p: dict[str, Any], daemon: Daemon | None) -> dict[str, Any]:
    n, k = p["n"], p["k"]
    await warm_up(svc)

    async def one_run() -> None:
        run = await svc.submit("bench-steps", {"k": k})
        final = await svc.wait(run["run_id"], timeout=900)
        if final["status"] != "completed":
            raise RuntimeError(f"W1 run ended {final['status']}: {final}")

    return await steps_burst(n, k, one_run)


async def w1c(svc: Any, p: dict[str, Any], daemon: Daemon | None) -> dict[str, Any]:
    """W1 with flow control: Concurrency(50, key=...) over ``keys`` keys."""
    n, k, keys = p["n"], p["k"], p["keys"]
    await warm_up(svc)
    counter = iter(range(10**9))

    async def one_run() -> None:
        key = f"key{next(counter) % keys}"
        run = await svc.submit("bench-steps-limited", {"k": k, "key": key})
        final = await svc.wait(run["run_id"], timeout=900)
        if final["status"] != "completed":
            raise RuntimeError(f"W1c run ended {final['status']}: {final}")

    return await steps_burst(n, k, one_run)


async def w2(svc: Any, p: dict[str, Any], daemon: Daemon | None) -> dict[str, Any]:
    n, seconds = p["n"], p["seconds"]
    await warm_up(svc)
    t0 = time.perf_counter()
    run_ids = await submit_all(svc, "bench-sleep", [{"seconds": seconds}] * n, "W2")
    submit_s = time.perf_counter() - t0
    runs = await wait_all(svc, run_ids, "W2")
    lateness: list[float] = []
    details = await gather_limited([svc.get(r) for r in run_ids], 200)
    for run, detail in zip(runs, details, strict=True):
        due = next(w["due_at"] for w in detail["waitpoints"] if w["waitpoint_id"] == "sleep:0")
        lateness.append(float(run["output"]) - float(due))
    return {"n": n, "sleep_s": seconds, "submit_seconds": round(submit_s, 3),
            "lateness": summary_ms(lateness), "min_lateness_ms": round(min(lateness) * 1000, 3)}


async def w3(svc: Any, p: dict[str, Any], daemon: Daemon | None) -> dict[str, Any]:
    n, m, rate = p["n"], p["paced"], p["paced_per_s"]
    await warm_up(svc)
    types = [f"bench.w3.{i}" for i in range(n + m)]
    t0 = time.perf_counter()
    run_ids = await submit_all(svc, "bench-event", [{"type": t} for t in types], "W3")
    park_s = await wait_waiting(svc, n + m, "W3") + (time.perf_counter() - t0)
    sent: list[float] = [0.0] * (n + m)

    async def send(i: int) -> None:
        sent[i] = time.time()
        await svc.send_event(types[i], {"i": i})

    # The last m runs get their events one at a time, then the first n all at once.
    await paced(m, rate, lambda i: send(n + i))
    paced_runs = await wait_all(svc, run_ids[n:], "W3 paced")
    t1 = time.perf_counter()
    await asyncio.gather(*(send(i) for i in range(n)))
    send_s = time.perf_counter() - t1
    runs = await wait_all(svc, run_ids[:n], "W3")
    lat = [float(r["output"]) - sent[i] for i, r in enumerate(runs)]
    paced_lat = [float(r["output"]) - sent[n + i] for i, r in enumerate(paced_runs)]
    return {"n": n, "park_seconds": round(park_s, 3), "send_seconds": round(send_s, 3),
            "event_to_resume": summary_ms(lat), "paced_per_s": rate,
            "paced_event_to_resume": summary_ms(paced_lat)}


async def w4(svc: Any, p: dict[str, Any], daemon: Daemon | None) -> dict[str, Any]:
    await warm_up(svc)

    async def one_run(k: int) -> None:
        run = await svc.submit("bench-steps", {"k": k})
        final = await svc.wait(run["run_id"], timeout=900)
        if final["status"] != "completed":
            raise RuntimeError(f"W4 k={k} ended {final['status']}")

    out = await sequential_steps(p["ks"], one_run)
    # Warm resume: a run with k recorded steps parked on an event, resumed r times.
    r = p["resumes"]
    out["resume"] = {}
    for k in p["resume_ks"]:
        typ = f"bench.w4.{k}"
        run = await svc.submit("bench-long-wait", {"k": k, "r": r, "type": typ})
        sends: list[float] = []
        for i in range(r):
            await until_waiting_on(svc, run["run_id"], f"{typ}.{i}")
            await asyncio.sleep(0.05)
            sends.append(time.time())
            await svc.send_event(f"{typ}.{i}", {})
        final = await svc.wait(run["run_id"], timeout=900)
        outputs = final["output"]
        resumed = [float(x) - t for x, t in zip(outputs, sends, strict=True)]
        out["resume"][str(k)] = summary_ms(resumed)
        say(f"  W4 warm resume after {k} steps: p50 {out['resume'][str(k)]['p50_ms']} ms")
    return out


async def w5(svc: Any, p: dict[str, Any], daemon: Daemon | None) -> dict[str, Any]:
    assert daemon is not None, "W5 runs through the daemon only"
    from orchestrator.client import Client

    n = p["n"]
    rss_before = rss_mb(daemon.pid)
    types = [f"bench.w5.{i}" for i in range(n)]
    t0 = time.perf_counter()
    run_ids = await submit_all(svc, "bench-event", [{"type": t} for t in types], "W5")
    park_s = await wait_waiting(svc, n, "W5") + (time.perf_counter() - t0)
    await asyncio.sleep(1.0)
    rss = rss_mb(daemon.pid)
    out: dict[str, Any] = {
        "n": n, "park_seconds": round(park_s, 2), "parks_per_s": round(n / park_s, 1),
        "rss_idle_mb": round(rss_before, 1), "rss_parked_mb": round(rss, 1),
        "kb_per_parked_run": round((rss - rss_before) * 1000 / n, 2),
        "threads": threads(daemon.pid),
    }
    say(f"  W5: {n} parked in {park_s:.1f} s, daemon RSS {rss:.0f} MB")
    await svc.close()
    out["stop_seconds"] = round(daemon.stop(), 2)
    out["restart_to_ready_s"] = round(daemon.start(), 3)
    say(f"  W5: restart-to-ready {out['restart_to_ready_s']} s")
    out["rss_after_restart_mb"] = round(rss_mb(daemon.pid), 1)
    async with Client.connect(daemon.socket) as c:
        stats = await c.stats()
        out["waiting_after_restart"] = int(stats["runs"].get("waiting", 0))
        t1 = time.perf_counter()
        done = 0

        async def send(t: str) -> None:
            nonlocal done
            await c.send_event(t, {})
            done += 1

        async with progress("W5 events sent", lambda: f"{done}/{n}"):
            await gather_limited([send(t) for t in types], 2000)
        await wait_all(c, run_ids, "W5 drain")
        drain = time.perf_counter() - t1
    out["drain_seconds"] = round(drain, 2)
    out["drain_runs_per_s"] = round(n / drain, 1)
    return out


async def w8(svc: Any, p: dict[str, Any], daemon: Daemon | None) -> dict[str, Any]:
    """Event triggers: ``n`` events of a type that ``bench-triggered`` is started by, sent by
    ``clients`` concurrent clients (each with up to ``in_flight`` sends outstanding on its
    connection; embedded: tasks on the one orchestrator). Latency is the run's ``started_at``
    minus the client's wall-clock send time (same host clock), and minus the event's received
    time (the run's ``created_at``, set in the event's transaction)."""
    from orchestrator.client import Client

    n, clients, in_flight = p["n"], p["clients"], p["in_flight"]
    await warm_up(svc)
    conns = ([await Client.open(daemon.socket) for _ in range(clients)] if daemon is not None
             else [svc] * clients)
    sent: list[float] = [0.0] * n
    run_ids: list[str] = [""] * n
    done = 0

    async def send(c: Any, i: int) -> None:
        nonlocal done
        sent[i] = time.time()
        reply = await c.send_event("bench.w8", {"i": i}, event_id=f"w8-{i}")
        (run_ids[i],) = reply["started"]
        done += 1

    async def one_client(k: int) -> None:
        await gather_limited([send(conns[k], i) for i in range(k, n, clients)], in_flight)

    try:
        t0 = time.time()
        async with progress("W8 events sent", lambda: f"{done}/{n}"):
            await asyncio.gather(*(one_client(k) for k in range(clients)))
        send_s = time.time() - t0
        runs = await wait_all(svc, run_ids, "W8")
    finally:
        if daemon is not None:
            for c in conns:
                await c.close()
    starts = [float(r["started_at"]) for r in runs]
    if sorted(int(r["output"]) for r in runs) != list(range(n)):
        raise RuntimeError("W8: the runs' outputs are not the events sent")
    last_start = max(starts)
    return {
        "n": n, "clients": clients, "in_flight_per_client": in_flight,
        "send_seconds": round(send_s, 3), "events_per_s": round(n / send_s, 1),
        "runs_started_per_s": round(n / (last_start - t0), 1),
        "send_to_start": summary_ms([s - sent[i] for i, s in enumerate(starts)]),
        "received_to_start": summary_ms(
            [s - float(r["created_at"]) for s, r in zip(starts, runs, strict=True)]),
        "all_completed_s": round(max(float(r["finished_at"]) for r in runs) - t0, 3),
        "latency_basis": "run started_at minus the client's send time (send_to_start) or "
                         "minus the event's received time = run created_at (received_to_start)",
    }


WORKLOADS = {"W1": w1, "W1c": w1c, "W2": w2, "W2small": w2, "W3": w3, "W4": w4, "W5": w5,
             "W8": w8}


async def run_cell(side: str, workload: str, params: dict[str, Any]) -> dict[str, Any]:
    """One (side, workload) cell in a fresh temporary directory on the local disk."""
    from orchestrator import Orchestrator, logs
    from orchestrator.client import Client
    from orchestrator.config import load_config

    with tempfile.TemporaryDirectory(prefix="wfbench-") as tmp:
        cfg_path = write_config(Path(tmp))
        fn = WORKLOADS[workload]
        result: dict[str, Any]
        if side == "ours-daemon":
            daemon = Daemon(cfg_path)
            ready = daemon.start()
            seen = [0]
            sse = asyncio.create_task(follow_changes(daemon.log, seen)) if HTTP else None
            try:
                client = await Client.open(daemon.socket)
                try:
                    result = await fn(client, params, daemon)
                finally:
                    await client.close()
                    if sse is not None:
                        sse.cancel()
                if sse is not None:
                    result["http_sse_events"] = seen[0]
                result["daemon_rss_end_mb"] = round(rss_mb(daemon.pid), 1)
            finally:
                daemon.stop()
            result["first_ready_s"] = round(ready, 3)
        else:
            cfg = load_config(cfg_path)
            logs.configure_logging(cfg.logging)
            async with Orchestrator(cfg, configure_logging=False) as orch:
                result = await fn(orch, params, None)
        result["synchronous"] = SYNCHRONOUS
        result["pid"] = os.getpid()
        return result
