"""W7 (SPEC §11): W1 and W4 on PostgreSQL with 1 and 2 daemons, DBOS Transact on the same
PostgreSQL server in the same run (its native backend), and the raw PostgreSQL commit rate.

    python -m bench.run --only W7 [--quick] [--no-dbos]     (or: python -m bench.w7)

One throwaway cluster (``bench/pgcluster.py``: fsync and synchronous_commit on) for the whole
run, a fresh database per cell. Our cells are real ``wf daemon`` processes (bench/ours.py's
config with ``storage.url``), driven over their sockets; with 2 daemons the runs are submitted
to them in turn (each drives the runs submitted to it). DBOS's cells run in a subprocess
(``bench.run --cell dbos-default:W1``) on their own database of the same server. Beside each
of ours: the CPU each party spent per step (daemons, PostgreSQL's processes, the bench client),
which says what limits it on a 2-core box.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import pgcluster
from bench.common import say, sequential_steps, steps_burst
from bench.ours import CONFIG, REPO, Daemon, warm_up

_TICK = os.sysconf("SC_CLK_TCK")
_WAIT_SLICE_S = 0.2
_LIVE = frozenset({"pending", "running", "waiting", "paused"})


def _cpu(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK


def _children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            out.append(int(entry))
    return out


def postgres_cpu(cluster: pgcluster.Cluster) -> float:
    """CPU seconds of the cluster's postmaster and its live children (backends, walwriter, ...)."""
    pid_file = Path(cluster.socket_dir) / "data" / "postmaster.pid"
    master = int(pid_file.read_text().split()[0])
    return _cpu(master) + sum(_cpu(p) for p in _children(master))


# --- the raw limit -----------------------------------------------------------------------------


async def raw_rates(url: str, seconds: float) -> dict[str, Any]:
    """Single-row autocommit INSERTs, and 100-row INSERT ... SELECT FROM unnest per commit,
    over one asyncpg connection on the unix socket (scaleout.md §5.1's table shape)."""
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        await conn.execute("CREATE TABLE raw (id bigserial PRIMARY KEY, a text, b text, "
                           "j jsonb, f float8)")
        payload = json.dumps({"k": "v" * 60})
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            await conn.execute("INSERT INTO raw (a, b, j, f) VALUES ($1, $2, $3, $4)",
                               "run", "step", payload, 1.0)
            n += 1
        single = n / (time.perf_counter() - t0)
        batch = 100
        cols = (["run"] * batch, ["step"] * batch, [payload] * batch, [1.0] * batch)
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            await conn.execute("INSERT INTO raw (a, b, j, f) SELECT * FROM "
                               "unnest($1::text[], $2::text[], $3::jsonb[], $4::float8[])", *cols)
            n += batch
        batched = n / (time.perf_counter() - t0)
    finally:
        await conn.close()
    return {"single_row_commits_per_s": round(single), "batched_rows_per_s": round(batched),
            "batch": batch, "seconds": seconds}


# --- ours ----------------------------------------------------------------------------------------


def _config(directory: Path, url: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    text = CONFIG.format(synchronous="full", repo=REPO)
    text = text.replace('path = "./wf.db"\nsynchronous = "full"\n', f'url = "{url}"\n')
    path = directory / "config.toml"
    path.write_text(text)
    return path


class _RoundRobin:
    """The Service methods the workloads call, spread over several daemons' clients: each
    run is submitted to the next daemon in turn and waited on through the same one."""

    def __init__(self, clients: list[Any]) -> None:
        self._clients = clients
        self._turn = itertools.cycle(range(len(clients)))
        self._where: dict[str, Any] = {}

    async def submit(self, *args: Any, **kw: Any) -> Any:
        client = self._clients[next(self._turn)]
        run = await client.submit(*args, **kw)
        self._where[run["run_id"]] = client
        return run

    async def wait(self, run_id: str, **kw: Any) -> Any:
        client = self._where[run_id]
        if len(self._clients) == 1:
            return await client.wait(run_id, **kw)
        # With 2 daemons a run submitted to one may be claimed and finished by the other, and
        # a `wait` on the first then does not learn of its end until it re-reads the run (no
        # cross-daemon wake-up for `wait` yet): wait in short slices.
        while True:
            run = await client.wait(run_id, timeout=_WAIT_SLICE_S)
            if run["status"] not in _LIVE:
                return run


async def ours_cell(cluster: pgcluster.Cluster, daemons: int, workload: str,
                    params: dict[str, Any], db: str) -> dict[str, Any]:
    from orchestrator.client import Client

    url = await pgcluster.create_database(cluster, db)
    with tempfile.TemporaryDirectory(prefix="wfbench-w7-") as tmp:
        procs = [Daemon(_config(Path(tmp) / f"d{i}", url)) for i in range(daemons)]
        for d in procs:
            d.start()
        clients = [await Client.open(d.socket) for d in procs]
        try:
            svc = _RoundRobin(clients)
            for c in clients:
                await warm_up(c)
            cpu0 = [_cpu(d.pid) for d in procs], postgres_cpu(cluster), time.process_time()
            try:
                if workload == "W1":
                    steps = params["n"] * params["k"]
                    result = await asyncio.wait_for(steps_burst(
                        params["n"], params["k"], lambda: _one_run(svc, params["k"])), 600)
                else:
                    steps = sum(params["ks"])
                    result = await asyncio.wait_for(sequential_steps(
                        params["ks"], lambda k: _one_run(svc, k)), 600)
            except TimeoutError:
                await _report_stuck(url, procs)
                raise
            result["cpu_us_per_step"] = _cpu_split(
                [_cpu(d.pid) - c for d, c in zip(procs, cpu0[0], strict=True)],
                postgres_cpu(cluster) - cpu0[1], time.process_time() - cpu0[2], steps,
                client_label="bench client")
            # Before the daemons stop: a clean stop releases the runs they own.
            result["runs_per_owner"] = await _runs_per_owner(url)
        finally:
            for c in clients:
                await c.close()
            for d in procs:
                d.stop()
    result["daemons"] = daemons
    return result


async def _runs_per_owner(url: str) -> list[int]:
    """How the runs were shared out: the runs each daemon ended up driving."""
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        found = await conn.fetch("SELECT count(*) FROM runs GROUP BY owner ORDER BY 1 DESC")
    finally:
        await conn.close()
    return [int(r[0]) for r in found]


async def _report_stuck(url: str, procs: list[Daemon]) -> None:
    """What a cell that did not finish left: runs by status, and each daemon's last lines."""
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        found = await conn.fetch("SELECT status, owner, needs_resume, count(*) FROM runs "
                                 "GROUP BY 1, 2, 3")
        say(f"W7 stuck: runs {[tuple(r) for r in found]}")
    finally:
        await conn.close()
    for d in procs:
        say(f"W7 stuck: {d.log} ends with:\n" + "\n".join(
            d.log.read_text().splitlines()[-20:]))


async def _one_run(svc: Any, k: int) -> None:
    run = await svc.submit("bench-steps", {"k": k})
    final = await svc.wait(run["run_id"], timeout=900)
    if final["status"] != "completed":
        raise RuntimeError(f"run of {k} steps ended {final['status']}: {final}")


def _cpu_split(daemons: list[float], postgres: float, client: float, steps: int, *,
               client_label: str) -> dict[str, float]:
    out = {f"daemon {i + 1}": round(c * 1e6 / steps, 1) for i, c in enumerate(daemons)}
    out["postgres"] = round(postgres * 1e6 / steps, 1)
    out[client_label] = round(client * 1e6 / steps, 1)
    return out


# --- DBOS ----------------------------------------------------------------------------------------


def dbos_cell(cluster: pgcluster.Cluster, workload: str, params: dict[str, Any], db: str,
              timeout: float) -> dict[str, Any]:
    """DBOS on its own database of the same server (DBOS creates it), in a subprocess."""
    params = {**params, "pg_url": cluster.url(db)}
    cmd = [sys.executable, "-m", "bench.run", "--cell", f"dbos-default:{workload}",
           "--params", json.dumps(params)]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return {"error": f"timeout after {timeout:.0f} s", "params": params}
    lines = [ln for ln in out.decode().splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"error": f"exit {proc.returncode}", "params": params}
    # No CPU split here: DBOS's backends end with its process, before they could be read.
    result: dict[str, Any] = json.loads(lines[-1])
    return result


# --- the whole workload ------------------------------------------------------------------------


def params(quick: bool, n_scale: float = 1.0) -> dict[str, Any]:
    n = max(10, int(1000 * (0.1 if quick else 1) * n_scale))
    return {
        "W1": {"n": n, "k": 10},
        "W4": {"ks": [100, 1000] if quick else [100, 1000, 10000]},
        # DBOS does ~150 steps/s on this box: W1 at N=1000 takes about a minute.
        "dbos W1": {"n": n, "k": 10},
        "dbos W4": {"ks": [100, 1000], "resume_ks": [], "resumes": 0},
        "raw_seconds": 2.0 if quick else 3.0,
    }


def run(quick: bool = False, n_scale: float = 1.0, dbos: bool = True,
        timeout: float = 900.0) -> dict[str, Any]:
    p = params(quick, n_scale)
    out: dict[str, Any] = {"cells": {}}
    with pgcluster.cluster() as cluster:
        out["postgres"] = cluster.version
        say(f"W7: PostgreSQL {cluster.version} at {cluster.socket_dir} (fsync on)")

        async def raw() -> dict[str, Any]:
            return await raw_rates(await pgcluster.create_database(cluster, "w7_raw"),
                                   p["raw_seconds"])

        out["raw"] = asyncio.run(raw())
        say(f"W7 raw PostgreSQL: {out['raw']['single_row_commits_per_s']:,} single-row "
            f"commits/s, {out['raw']['batched_rows_per_s']:,} rows/s in 100-row commits")
        for daemons in (1, 2):
            for wl in ("W1", "W4"):
                say(f"W7 ours {wl}, {daemons} daemon(s)")
                cell = _uv(ours_cell(cluster, daemons, wl, p[wl], f"w7_{wl.lower()}_{daemons}"))
                out["cells"][f"ours-{daemons}d:{wl}"] = cell
                say(f"W7 ours {wl} {daemons}d: {json.dumps(_brief(cell))}")
        if dbos:
            for wl in ("W1", "W4"):
                say(f"W7 DBOS {wl} on the same PostgreSQL")
                cell = dbos_cell(cluster, wl, p[f"dbos {wl}"], f"w7_dbos_{wl.lower()}", timeout)
                out["cells"][f"dbos:{wl}"] = cell
                say(f"W7 DBOS {wl}: {json.dumps(_brief(cell))}")
    return out


def _uv(coro: Any) -> Any:
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:
        return asyncio.run(coro)


def _brief(cell: dict[str, Any]) -> dict[str, Any]:
    keys = ("steps_per_s", "latency", "ks", "cpu_us_per_step", "runs_per_owner", "error")
    return {k: cell[k] for k in keys if k in cell}


def _get(d: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(d, dict) or key not in d:
            return None
        d = d[key]
    return d


def table(w7: dict[str, Any]) -> str:
    """The W7 table: our figures beside DBOS's, as ratios to DBOS and to the raw limit."""
    c = w7["cells"]
    raw = w7.get("raw", {})
    single, batched = raw.get("single_row_commits_per_s"), raw.get("batched_rows_per_s")

    def r(a: Any, b: Any, fmt: str = "{:.2f}") -> str:
        if not isinstance(a, int | float) or not isinstance(b, int | float) or not b:
            return "—"
        return fmt.format(a / b)

    def v(x: Any, unit: str = "") -> str:
        if x is None:
            return "—"
        return f"{x:,.0f}{unit}" if abs(x) >= 100 else f"{x:.2f}{unit}"

    head = ["W7 (PostgreSQL)", "ours, 1 daemon", "ours, 2 daemons", "DBOS", "1 daemon ÷ DBOS",
            "2 daemons ÷ DBOS"]
    rows = [head, ["---"] * len(head)]
    s1, s2, sd = (_get(c.get(k), "steps_per_s") for k in ("ours-1d:W1", "ours-2d:W1", "dbos:W1"))
    n = _get(c.get("dbos:W1"), "n")
    rows.append(["W1 steps/s ↑", v(s1), v(s2), v(sd) + (f" (N={n:,})" if n else ""),
                 r(s1, sd, "{:.0f}×"), r(s2, sd, "{:.0f}×")])
    for q in ("p50_ms", "p99_ms"):
        a, b, d = (_get(c.get(k), "latency", q) for k in ("ours-1d:W1", "ours-2d:W1", "dbos:W1"))
        rows.append([f"W1 run latency {q[:3]} ↓", v(a, " ms"), v(b, " ms"), v(d, " ms"),
                     r(a, d), r(b, d)])
    for k in ("100", "1000", "10000"):
        a, b, d = (_get(c.get(x), "ks", k, "ms_per_step")
                   for x in ("ours-1d:W4", "ours-2d:W4", "dbos:W4"))
        if a is None and d is None:
            continue
        rows.append([f"W4 ms/step, {int(k):,} steps ↓", v(a, " ms"), v(b, " ms"), v(d, " ms"),
                     r(a, d), r(b, d)])
    rows.append(["W1 steps/s ÷ raw 100-row commits (rows/s)", r(s1, batched, "{:.0%}"),
                 r(s2, batched, "{:.0%}"), r(sd, batched, "{:.1%}"), "", ""])
    w4a, w4b, w4d = (_get(c.get(x), "ks", "1000", "ms_per_step")
                     for x in ("ours-1d:W4", "ours-2d:W4", "dbos:W4"))
    inv = [1000 / x if isinstance(x, int | float) and x else None for x in (w4a, w4b, w4d)]
    rows.append(["W4 (1k) steps/s ÷ raw single-row commits/s", r(inv[0], single, "{:.0%}"),
                 r(inv[1], single, "{:.0%}"), r(inv[2], single, "{:.0%}"), "", ""])
    rows.append([f"raw PostgreSQL: {v(single)} single-row commits/s, {v(batched)} rows/s in "
                 "100-row commits", "", "", "", "", ""])
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    return "\n".join("| " + " | ".join(col.ljust(widths[i]) for i, col in enumerate(row)) + " |"
                     for row in rows)


def main() -> int:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-dbos", action="store_true")
    ap.add_argument("--n-scale", type=float, default=1.0)
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    result = run(args.quick, args.n_scale, dbos=not args.no_dbos)
    print(table(result))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
