"""Split a raw ``py-spy record --threads`` profile of the daemon into areas, per thread.

Not a test. Reads the collapsed stacks ``bench.threads_w1 --py-spy OUT`` writes and attributes
each sample to the area of its innermost frame that belongs to the project (or structlog):
stdlib frames (asyncio, dataclasses, enum, ...) count for the project code that called them. A
sample with no project frame below the loop's ``run`` is the event loop's own C code (uvloop).
The writer thread is split by what its statement does (the SQL runs with the GIL released).

    .venv/bin/python -m bench.spy_areas OUT [--top 15]
"""

from __future__ import annotations

import argparse
import re
from collections import Counter, defaultdict

_FRAME = re.compile(r"^(?P<fn>.*) \((?P<file>[^:()]+):(?P<line>\d+)\)$")

# (substring of the file path, area); the first match wins, so specific entries go first.
AREAS: tuple[tuple[str, str], ...] = (
    ("structlog/", "logging"),
    ("orchestrator/logs.py", "logging"),
    ("orchestrator/daemon/server.py", "socket / protocol"),
    ("orchestrator/api/", "socket / protocol"),
    ("orchestrator/engine/engine.py", "engine requests (submit, wait)"),
    ("orchestrator/engine/flow/", "engine requests (submit, wait)"),
    ("orchestrator/engine/bridge.py", "journal / bridge"),
    ("runtime/journal.py", "journal / bridge"),
    ("storage/sqlite/writer.py", "storage hand-off (ops, futures)"),
    ("storage/sqlite/storage.py", "storage hand-off (ops, futures)"),
    ("storage/ops.py", "storage hand-off (ops, futures)"),
    ("storage/", "storage hand-off (ops, futures)"),
    ("orchestrator/engine/", "actor / supervisor"),
    ("runtime/", "body loop / executor / step"),
    ("bench/bench_workflows.py", "body loop / executor / step"),
)

WRITER_AREAS: tuple[tuple[str, str], ...] = (
    ("create_run", "SQL: insert run (+ search index trigger)"),
    ("_close_run", "SQL: close run (timers, waitpoints)"),
    ("update_run", "SQL: update run (+ search index trigger on output)"),
    ("_flush_steps", "SQL: insert step rows (numbers taken once per run per batch)"),
    ("record_step_attempt", "SQL: insert step rows (numbers taken once per run per batch)"),
    ("_checkpoint", "WAL checkpoint"),
    ("_file_size", "WAL size check"),
)


def area_of(frames: list[str]) -> str:
    for frame in reversed(frames):
        m = _FRAME.match(frame)
        if m is None:
            continue
        path = m["file"]
        for needle, area in AREAS:
            if needle in path:
                return area
    return "event loop (uvloop C code, task switches)"


def writer_area(frames: list[str]) -> str:
    names = [(_FRAME.match(f) or {"fn": f})["fn"] for f in frames]  # type: ignore[index]
    for needle, area in WRITER_AREAS:
        if any(needle in n for n in names):
            return area
    last = frames[-1] if frames else ""
    if "writer.py" in last and ("_run_batch" in last or "_apply" in last):
        # COMMIT, BEGIN, SAVEPOINT/RELEASE: the line tells which
        return "COMMIT / BEGIN / SAVEPOINT (WAL write)"
    if "_loop_forever" in last or "_deliver" in last:
        return "queue, wake-ups"
    return "other (" + (names[-1] if names else "?") + ")"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("profile")
    parser.add_argument("--top", type=int, default=15, help="innermost project lines to list")
    args = parser.parse_args()
    per_thread: dict[str, Counter[str]] = defaultdict(Counter)
    lines: dict[str, Counter[str]] = defaultdict(Counter)
    with open(args.profile) as fh:
        for row in fh:
            stack, _, count = row.rstrip("\n").rpartition(" ")
            frames = stack.split(";")
            thread, frames = frames[0], frames[1:]
            name = thread.split(": ", 1)[-1]
            kind = "writer" if name.startswith("writer:") else name
            n = int(count)
            area = writer_area(frames) if kind == "writer" else area_of(frames)
            per_thread[kind][area] += n
            lines[kind][frames[-1] if frames else "?"] += n
    for thread, areas in sorted(per_thread.items(), key=lambda kv: -sum(kv[1].values())):
        total = sum(areas.values())
        print(f"{thread}: {total} samples")
        for area, n in areas.most_common():
            print(f"  {100 * n / total:5.1f}%  {area}")
        print("  innermost frames:")
        for frame, n in lines[thread].most_common(args.top):
            print(f"    {100 * n / total:5.1f}%  {frame}")


if __name__ == "__main__":
    main()
