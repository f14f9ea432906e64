"""Soak (issue 10 item 9): mixed load against a real daemon with a ``tail`` held open, sampled
once a second (load, sampler and verdicts: ``soak.py``).

Campaign (``WF_CAMPAIGN=1``): 10 minutes; RSS slope <= 1 MiB/min and fd slope 0 over the last
8 minutes, ``-wal`` <= 64 MiB throughout, p99 step latency of the last minute <= 1.2x the first
(or less than 1 ms above it).
CI: 15 s; the WAL bound, the fd count back to its baseline, and a working sampler (the slope and
ratio bounds are printed, not asserted: CPU noise on a shared 2-core machine).

The samples go to ``soak-samples.json`` in the daemon's tmp dir (path printed); pytest keeps
only its last 3 tmp trees, and other sessions on the machine rotate them: to keep the file, run
with ``--basetemp=DIR``.

``WF_SOAK_MUTANTS=1`` also runs each checker against its mutant (``rel_mutants.py``, or a rogue
reader pinning the WAL) and requires the matching violation.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import sqlite3
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.crash.campaign import CAMPAIGN, SEED
from tests.reliability import soak
from tests.reliability.conftest import REL_DIR, RelDaemon, wait_fds_back

SECONDS = 600.0 if CAMPAIGN else 15.0
WINDOW = 480.0 if CAMPAIGN else SECONDS - 5  # slopes over the last 8 minutes
EDGE = 60.0 if CAMPAIGN else 5.0  # p99 latency: first vs last minute
MUTANT_SECONDS = 45.0
MUTANTS = CAMPAIGN or os.environ.get("WF_SOAK_MUTANTS") == "1"  # the campaign runs them

pytestmark = [pytest.mark.slow, pytest.mark.timeout(SECONDS + 120)]


def soak_daemon(make_rel_daemon: Callable[..., RelDaemon], name: str) -> RelDaemon:
    return make_rel_daemon(name=name, workflows={
        "paths": [str(REL_DIR)], "modules": ["rel_workflows", "rel_mutants"]})


def report(d: RelDaemon, result: soak.SoakResult, f: soak.Figures, label: str) -> Path:
    out = d.root / "soak-samples.json"
    out.write_text(json.dumps({"seed": SEED, "figures": dataclasses.asdict(f), **result.to_json()}))
    sys.stderr.write(
        f"\nsoak[{label}] SEED={SEED} {result.duration:.0f}s runs={result.runs_done} "
        f"jobs={result.jobs} tail={result.tail_records} (+{result.tail_lagged} lagged) "
        f"failures={len(result.failures)}\n  {f}\n  samples: {out}\n")
    return out


def test_soak(make_rel_daemon: Callable[..., RelDaemon]) -> None:
    d = soak_daemon(make_rel_daemon, "soak")
    baseline = d.fd_count()
    result = asyncio.run(soak.Soak(d.socket, d.db_path, d.pid, seed=SEED,
                                   seconds=SECONDS).run())
    f = soak.figures(result, WINDOW, EDGE)
    report(d, result, f, "campaign" if CAMPAIGN else "ci")
    assert d.alive(), d.new_log()[-3000:]
    # The sampler works: about one sample a second, every figure read.
    assert len(result.samples) >= SECONDS * 0.8, len(result.samples)
    assert all(s.rss_kib > 0 and s.fds > 0 for s in result.samples)
    assert f.latencies > 0 and result.runs_done > 0
    assert result.tail_last_t > SECONDS - 5, "the tail went quiet before the end"
    found = soak.violations(result, f, WINDOW, strict=CAMPAIGN)
    assert not found, found
    wait_fds_back(d, baseline)


@pytest.mark.skipif(not MUTANTS, reason="WF_SOAK_MUTANTS=1 runs the soak against its mutants")
@pytest.mark.parametrize(("mutant", "expect"), [
    ("FD_LEAK", "fd slope"),
    ("RSS_LEAK", "RSS slope"),
    ("SLOW_COMMITS", "p99 step latency"),
    ("ROGUE_READER", "-wal"),
])
@pytest.mark.timeout(MUTANT_SECONDS + 120)
def test_soak_detects_mutant(make_rel_daemon: Callable[..., RelDaemon],
                             monkeypatch: pytest.MonkeyPatch, mutant: str, expect: str) -> None:
    if mutant != "ROGUE_READER":
        monkeypatch.setenv("WF_REL_MUTANT", mutant)
    d = soak_daemon(make_rel_daemon, f"soak-{mutant}")
    rogue = None
    if mutant == "ROGUE_READER":
        # A reader left in a transaction (an open `sqlite3 wf.db` shell): no checkpoint can get
        # past its snapshot. Big step outputs make 64 MiB reachable in a short run.
        rogue = sqlite3.connect(d.db_path, isolation_level=None)
        rogue.execute("BEGIN")
        rogue.execute("SELECT count(*) FROM runs").fetchall()
    try:
        result = asyncio.run(soak.Soak(
            d.socket, d.db_path, d.pid, seed=SEED, seconds=MUTANT_SECONDS,
            fill_size=262_144 if rogue else 16_384).run())
    finally:
        if rogue is not None:
            rogue.close()
    window = MUTANT_SECONDS - 10
    f = soak.figures(result, window, edge=10.0)
    report(d, result, f, mutant)
    found = soak.violations(result, f, window, strict=True)
    sys.stderr.write(f"  violations: {found}\n")
    assert any(v.startswith(expect) for v in found), found
