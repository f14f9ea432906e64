"""``python -m bench.run``: every workload of SPEC §11 for our engine and DBOS, one table.

    python -m bench.run [--quick] [--full] [--only W1,W3] [--n-scale 0.1] [--no-dbos]

Sides: ``ours-daemon`` (a real ``wf daemon`` subprocess, driven over its Unix socket by
``orchestrator.client.Client``), ``ours-embedded`` (``Orchestrator(config)`` in-process),
``dbos-default`` and ``dbos-tuned`` (DBOS Transact, async API, SQLite system database;
tuned = a shorter notification polling interval). Every (side, workload) cell runs in its own
subprocess in a fresh temporary directory on the same disk, with a timeout. W6 is the raw
sqlite3 limit on that disk with our pragmas. W7 is PostgreSQL (bench/w7.py: its own throwaway
cluster, 1 and 2 daemons, DBOS on the same server, the raw commit rate). Progress goes to
stderr; the table to stdout; the figures to ``bench/results/latest.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import platform
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import say

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results" / "latest.json"
SIDES = ("ours-daemon", "ours-embedded", "dbos-default", "dbos-tuned")
WORKLOADS = ("W1", "W1c", "W2", "W2small", "W3", "W4", "W5", "W6", "W7", "W8")
TUNED_POLL_S = 0.05

# Which sides run which workload. W5 is about the daemon process (RSS, restart); DBOS-tuned only
# differs from default by its polling interval, which matters for W1-W3.
MATRIX: dict[str, tuple[str, ...]] = {
    "W1": SIDES,
    "W1c": ("ours-daemon", "ours-embedded"),  # W1 under Concurrency(50, key) over 100 keys
    "W2": SIDES,
    "W2small": ("ours-daemon", "ours-embedded"),  # W2 at DBOS's N, for a like-for-like row
    "W3": SIDES,
    "W4": ("ours-daemon", "ours-embedded", "dbos-default"),
    "W5": ("ours-daemon", "dbos-default"),
    "W8": ("ours-daemon", "ours-embedded"),  # event triggers: DBOS has no event-started runs
}


def params_for(side: str, workload: str, args: argparse.Namespace) -> dict[str, Any]:
    dbos = side.startswith("dbos")
    quick = args.quick

    def n(x: int) -> int:
        return max(10, int(x * (0.1 if quick else 1) * args.n_scale))

    if workload == "W1":
        return {"n": n(1000), "k": 10}
    if workload == "W1c":
        return {"n": n(1000), "k": 10, "keys": 100}
    if workload == "W2":
        # DBOS starts ~110 runs/s: 10k would take minutes before the first wake.
        return {"n": n(1000 if dbos else 10000), "seconds": 2.0}
    if workload == "W2small":
        return {"n": n(1000), "seconds": 2.0}
    if workload == "W3":
        # Plus 200 runs whose events come one at a time (100/s): latency without a queue.
        return {"n": n(1000), "paced": 200 if not quick else 50, "paced_per_s": 100.0}
    if workload == "W4":
        ks = [100, 1000] if quick else [100, 1000, 10000]
        # DBOS replays nothing on recv either way; its 10k-step resume run would add ~2 min.
        resume_ks = [10, 1000] if dbos else [10, ks[-1]]
        return {"ks": ks, "resume_ks": resume_ks, "resumes": 5}
    if workload == "W5":
        if dbos:
            return {"n": n(2000)}
        return {"n": n(100000 if args.full else 20000)}
    if workload == "W8":
        return {"n": n(10000), "clients": 4, "in_flight": 100}
    raise ValueError(workload)


# --- one cell (in a subprocess) ----------------------------------------------------------------


def run_cell(spec: str, params: dict[str, Any]) -> dict[str, Any]:
    side, workload = spec.split(":")
    if side.startswith("ours"):
        from bench import ours

        try:
            import uvloop

            return uvloop.run(ours.run_cell(side, workload, params))  # type: ignore[no-any-return]
        except ImportError:
            return asyncio.run(ours.run_cell(side, workload, params))
    from bench import peer_dbos

    poll = TUNED_POLL_S if side == "dbos-tuned" else None
    return peer_dbos.run_cell(workload, params, poll)


def spawn_cell(side: str, workload: str, params: dict[str, Any], timeout: float) -> dict[str, Any]:
    say(f"{workload} {side} {json.dumps(params)}")
    cmd = [sys.executable, "-m", "bench.run", "--cell", f"{side}:{workload}",
           "--params", json.dumps(params)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        say(f"{workload} {side}: TIMEOUT after {timeout:.0f} s")
        return {"error": f"timeout after {timeout:.0f} s", "params": params}
    finally:
        # Anything the cell left behind in its session (a daemon) goes with it.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    lines = [ln for ln in out.decode().splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        say(f"{workload} {side}: FAILED (exit {proc.returncode})")
        return {"error": f"exit {proc.returncode}", "params": params}
    result: dict[str, Any] = json.loads(lines[-1])
    result["params"] = params
    result["wall_seconds"] = round(time.perf_counter() - t0, 1)
    say(f"{workload} {side}: done in {result['wall_seconds']} s")
    return result


# --- W6: the raw limit -------------------------------------------------------------------------


def w6(seconds: float) -> dict[str, Any]:
    from bench.storage_bench import raw_rate

    with tempfile.TemporaryDirectory(prefix="wfbench-raw-") as tmp:
        single = raw_rate(Path(tmp), "full", 1, seconds)
        batched = raw_rate(Path(tmp), "full", 100, seconds)
    say(f"W6 raw sqlite3 full: {single:,.0f} single-row commits/s, {batched:,.0f} rows/s batched")
    return {"synchronous": "full", "single_row_commits_per_s": round(single),
            "batched_rows_per_s": round(batched), "batch": 100, "seconds": seconds}


# --- the table -----------------------------------------------------------------------------------


def _get(d: dict[str, Any] | None, *path: str) -> Any:
    for key in path:
        if not isinstance(d, dict) or key not in d:
            return None
        d = d[key]
    return d


def fmt(v: Any, unit: str = "", digits: int = 1) -> str:
    if v is None:
        return "—"
    if isinstance(v, float | int):
        if abs(v) >= 1000:
            return f"{v:,.0f}{unit}"
        return f"{v:.{digits}f}{unit}"
    return str(v)


def ratio(a: Any, b: Any) -> str:
    """``a ÷ b`` (ours ÷ DBOS), or a dash."""
    if not isinstance(a, int | float) or not isinstance(b, int | float) or b == 0:
        return "—"
    r = a / b
    if r >= 100:
        return f"{r:,.0f}"
    return f"{r:.1f}" if r >= 10 else f"{r:.2f}" if r >= 0.1 else f"{r:.3f}"


# (label, workload, path into the result, unit, higher is better)
METRICS: list[tuple[str, str, tuple[str, ...], str, bool]] = [
    ("W1 steps/s", "W1", ("steps_per_s",), "", True),
    ("W1 runs/s", "W1", ("runs_per_s",), "", True),
    ("W1 run latency p50", "W1", ("latency", "p50_ms"), " ms", False),
    ("W1 run latency p99", "W1", ("latency", "p99_ms"), " ms", False),
    ("W1c steps/s (Concurrency 50/key, 100 keys)", "W1c", ("steps_per_s",), "", True),
    ("W2 wake lateness p50", "W2", ("lateness", "p50_ms"), " ms", False),
    ("W2 wake lateness p99", "W2", ("lateness", "p99_ms"), " ms", False),
    ("W2 wake lateness max", "W2", ("lateness", "max_ms"), " ms", False),
    ("W2 at N=1k: lateness p50", "W2small", ("lateness", "p50_ms"), " ms", False),
    ("W2 at N=1k: lateness p99", "W2small", ("lateness", "p99_ms"), " ms", False),
    ("W2 at N=1k: lateness max", "W2small", ("lateness", "max_ms"), " ms", False),
    ("W3 event→resume p50", "W3", ("event_to_resume", "p50_ms"), " ms", False),
    ("W3 event→resume p99", "W3", ("event_to_resume", "p99_ms"), " ms", False),
    ("W3 paced (100/s) event→resume p50", "W3", ("paced_event_to_resume", "p50_ms"), " ms",
     False),
    ("W3 paced (100/s) event→resume p99", "W3", ("paced_event_to_resume", "p99_ms"), " ms",
     False),
    ("W4 ms/step, 100 steps", "W4", ("ks", "100", "ms_per_step"), " ms", False),
    ("W4 ms/step, 1k steps", "W4", ("ks", "1000", "ms_per_step"), " ms", False),
    ("W4 ms/step, 10k steps", "W4", ("ks", "10000", "ms_per_step"), " ms", False),
    ("W4 t(10k)/t(1k)", "W4", ("ratio_10k_1k",), "", False),
    ("W4 resume after 10 steps p50", "W4", ("resume", "10", "p50_ms"), " ms", False),
    ("W4 resume after 1k steps p50", "W4", ("resume", "1000", "p50_ms"), " ms", False),
    ("W4 resume after 10k steps p50", "W4", ("resume", "10000", "p50_ms"), " ms", False),
    ("W5 RSS, parked", "W5", ("rss_parked_mb",), " MB", False),
    ("W5 KB per parked run", "W5", ("kb_per_parked_run",), " KB", False),
    ("W5 park rate runs/s", "W5", ("parks_per_s",), "", True),
    ("W5 restart-to-ready", "W5", ("restart_to_ready_s",), " s", False),
    ("W5 drain runs/s", "W5", ("drain_runs_per_s",), "", True),
    ("W8 trigger: runs started/s (4 clients)", "W8", ("runs_started_per_s",), "", True),
    ("W8 event sent→run started p50", "W8", ("send_to_start", "p50_ms"), " ms", False),
    ("W8 event sent→run started p99", "W8", ("send_to_start", "p99_ms"), " ms", False),
    ("W8 all runs completed", "W8", ("all_completed_s",), " s", False),
]

N_PATH = {"W1": ("n",), "W1c": ("n",), "W2": ("n",), "W2small": ("n",), "W3": ("n",), "W5": ("n",),
          "W8": ("n",)}


def _cell(cells: dict[str, Any], wl: str, side: str) -> dict[str, Any] | None:
    cell = cells.get(wl, {}).get(side)
    if cell is None and wl == "W2small" and side.startswith("dbos"):
        cell = cells.get("W2", {}).get(side)  # DBOS's W2 already runs at N=1k
    return cell


def table(results: dict[str, Any]) -> str:
    cells = results["cells"]
    head = ["metric", "ours daemon", "ours embedded", "DBOS default", "DBOS tuned",
            "ours daemon ÷ DBOS default"]
    rows = [head, ["---"] * len(head)]
    for label, wl, path, unit, higher in METRICS:
        vals = [_get(_cell(cells, wl, side), *path) for side in SIDES]
        if all(v is None for v in vals):
            continue
        shown = []
        for side, v in zip(SIDES, vals, strict=True):
            cell = _cell(cells, wl, side)
            text = fmt(v, unit, 2 if unit in (" ms", " s") else 1)
            if cell and "error" in cell:
                text = f"error: {cell['error']}"
            elif v is not None and path[0].startswith("paced"):
                text += f" (N={_get(cell, path[0], 'n'):,})"  # only the paced runs
            elif v is not None and wl in N_PATH:
                text += f" (N={_get(cell, *N_PATH[wl]):,})"
            shown.append(text)
        rows.append([f"{label} {'↑' if higher else '↓'}", *shown, ratio(vals[0], vals[2])])
    w6r = cells.get("W6", {}).get("raw")
    if w6r:
        w1 = _get(cells.get("W1", {}).get("ours-daemon"), "steps_per_s")
        w1e = _get(cells.get("W1", {}).get("ours-embedded"), "steps_per_s")
        b = w6r["batched_rows_per_s"]
        rows.append(["W6 raw sqlite3 1 row/commit", fmt(w6r["single_row_commits_per_s"]),
                     "", "", "", ""])
        rows.append(["W6 raw sqlite3 100 rows/commit", fmt(b), "", "", "", ""])
        rows.append(["W1 steps/s ÷ W6 batched",
                     f"{w1 / b:.0%}" if w1 else "—", f"{w1e / b:.0%}" if w1e else "—",
                     "", "", ""])
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    out = []
    for r in rows:
        out.append("| " + " | ".join(c.ljust(widths[i]) for i, c in enumerate(r)) + " |")
    return "\n".join(out)


def machine() -> dict[str, Any]:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                            capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                           capture_output=True, text=True).stdout.strip()
    info: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "git_commit": commit + ("+dirty" if dirty else ""),
        "cpus": os.cpu_count(), "machine": platform.machine(), "system": platform.system(),
        "python": platform.python_version(), "sqlite": sqlite3.sqlite_version,
    }
    try:
        from importlib.metadata import version

        import dbos  # noqa: F401

        info["dbos"] = version("dbos")
    except ImportError:
        info["dbos"] = None
    with open("/proc/meminfo") as fh:
        info["mem_total_kb"] = int(fh.readline().split()[1])
    return info


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="N / 10, W4 up to 1k steps")
    ap.add_argument("--full", action="store_true", help="W5 at 100k parked runs")
    ap.add_argument("--only", default="", help="comma-separated workloads, e.g. W1,W3")
    ap.add_argument("--sides", default="", help="comma-separated sides (default: all)")
    ap.add_argument("--n-scale", type=float, default=1.0, help="multiply every N")
    ap.add_argument("--no-dbos", action="store_true", help="skip the DBOS sides")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per cell")
    ap.add_argument("--w6-seconds", type=float, default=3.0)
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--merge", action="store_true",
                    help="keep the other cells of an existing --out file (re-run a few cells)")
    ap.add_argument("--http", action="store_true",
                    help="ours-daemon with HTTP on and an SSE client following `changes` "
                         "(the performance guard of SPEC §12)")
    ap.add_argument("--cell", help=argparse.SUPPRESS)
    ap.add_argument("--params", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.http:
        os.environ["WF_BENCH_HTTP"] = "1"  # read by the cells (subprocesses inherit it)

    if args.cell:
        result = run_cell(args.cell, json.loads(args.params))
        print(json.dumps(result), flush=True)
        return 0

    names = {w.lower(): w for w in WORKLOADS}
    only = [names.get(w.strip().lower(), w.strip()) for w in args.only.split(",") if w.strip()]
    unknown = [w for w in only if w not in WORKLOADS]
    if unknown:
        ap.error(f"unknown workload(s) {unknown}; known: {', '.join(WORKLOADS)}")
    only = only or list(WORKLOADS)
    sides = [s.strip() for s in args.sides.split(",") if s.strip()] or list(SIDES)
    if args.no_dbos:
        sides = [s for s in sides if not s.startswith("dbos")]
    if any(s.startswith("dbos") for s in sides):
        try:
            import dbos  # noqa: F401
        except ImportError:
            say("DBOS is not installed (pip install -e '.[bench]'); skipping its rows")
            sides = [s for s in sides if not s.startswith("dbos")]

    results: dict[str, Any] = {
        "machine": machine(),
        "mode": "quick" if args.quick else "full" if args.full else "default",
        "n_scale": args.n_scale,
        "synchronous": {"ours": "full", "dbos": None},
        "dbos_tuned_polling_interval_s": TUNED_POLL_S,
        "cells": {},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.merge and out.exists():
        old = json.loads(out.read_text())
        results["cells"] = old.get("cells", {})
        if results["synchronous"]["dbos"] is None:
            results["synchronous"]["dbos"] = old.get("synchronous", {}).get("dbos")
        results["merged_into"] = old.get("machine")
    t0 = time.perf_counter()
    for wl in only:
        if wl == "W6":
            results["cells"]["W6"] = {"raw": w6(args.w6_seconds)}
            continue
        if wl == "W7":  # PostgreSQL: its own cluster, sides and table (bench/w7.py)
            from bench import w7

            try:
                results["cells"]["W7"] = w7.run(
                    args.quick, args.n_scale, dbos=any(s.startswith("dbos") for s in sides),
                    timeout=args.timeout)
            except RuntimeError as exc:  # no PostgreSQL server binaries: the rest still runs
                say(f"W7 skipped: {exc}")
                results["cells"]["W7"] = {"error": str(exc), "cells": {}}
            out.write_text(json.dumps(results, indent=2) + "\n")
            continue
        for side in MATRIX[wl]:
            if side not in sides:
                continue
            cell = spawn_cell(side, wl, params_for(side, wl, args), args.timeout)
            results["cells"].setdefault(wl, {})[side] = cell
            if side.startswith("dbos") and "pragmas" in cell:
                results["synchronous"]["dbos"] = cell["pragmas"]
            out.write_text(json.dumps(results, indent=2) + "\n")  # partial results survive
    results["total_seconds"] = round(time.perf_counter() - t0, 1)
    text = table(results)
    if "W7" in results["cells"]:
        from bench import w7

        text += "\n\n" + w7.table(results["cells"]["W7"])
    results["table_markdown"] = text
    out.write_text(json.dumps(results, indent=2) + "\n")
    m = results["machine"]
    print(f"\n{m['date']} commit {m['git_commit']}, {m['cpus']} cores, Python {m['python']}, "
          f"SQLite {m['sqlite']}, DBOS {m['dbos']}; ours synchronous=full, DBOS "
          f"{results['synchronous']['dbos']}; total {results['total_seconds']} s\n")
    print(text)
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
