"""Two daemons on one PostgreSQL under the mixed workload, with kill -9, SIGSTOP past the
lease, ``pg_ctl restart -m immediate`` and killed sessions (issue 20, Reliability; see
``cluster_driver.py`` for the round and its checks).

CI: 3 rounds × 40 runs, 4 disruptions each. ``make reliability`` (``WF_CAMPAIGN=1``): 50 rounds
× 150 runs, 6 disruptions each; ``WF_CLUSTER_ROUNDS=<n>`` runs n rounds at either size. Replay a
round with ``WF_CLUSTER_REPLAY=<seed> [WF_CLUSTER_RUNS=<runs>] .venv/bin/pytest -q
tests/crash/test_cluster_crashes.py -k replay``.

The rounds run on a private PostgreSQL cluster of this module (not the session's): they restart
it. It runs with ``fsync=off`` like every test cluster; ``-m immediate`` kills the server's
processes, not the machine, so what the server acknowledged is in the OS page cache and the
WAL replay finds it (a power cut is SQLite's campaign item 3b).
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import pg
from tests.crash import campaign
from tests.crash import mixed_workflows as mw
from tests.crash.cluster_driver import ClusterReport, ClusterRound

pytestmark = pytest.mark.slow

RUNS = 150 if campaign.CAMPAIGN else 40
ROUNDS = campaign.rounds(ci=3, campaign=50)
if os.environ.get("WF_CLUSTER_ROUNDS"):  # another number of rounds at either size
    ROUNDS = list(range(campaign.SEED, campaign.SEED + int(os.environ["WF_CLUSTER_ROUNDS"])))
DISRUPTIONS = 6 if campaign.CAMPAIGN else 4
SCALE = 1.0 if campaign.CAMPAIGN else 0.3
LEASE = 2.0
ROUND_TIMEOUT = 180.0  # a round takes 10-40 s


@pytest.fixture(scope="module")
def own_cluster() -> Iterator[pg.Cluster]:
    yield from pg.start_cluster()


def summary(reports: list[ClusterReport]) -> str:
    dis: Counter[str] = Counter()
    deaths: Counter[str] = Counter()
    for rep in reports:
        dis.update(rep.disruptions)
        deaths.update(rep.deaths)
    skipped = sorted({s for rep in reports for s in rep.skipped})
    return (f"cluster crashes: rounds={len(reports)} runs={sum(r.runs for r in reports)} "
            f"acked={sum(r.acked for r in reports)} "
            f"indeterminate={sum(r.indeterminate for r in reports)} "
            f"disruptions={dict(sorted(dis.items()))} deaths={dict(sorted(deaths.items()))} "
            f"ledger_lines={sum(r.ledger_lines for r in reports)} "
            f"reruns={sum(r.reruns for r in reports)} "
            f"woke_runs={sum(r.woke_runs for r in reports)} "
            f"adoptions={sum(r.adopted for r in reports)} "
            f"twin_runs={sum(r.limited for r in reports)} "
            f"twin_waited={sum(r.waited for r in reports)} "
            f"group_peak={max((r.group_peak for r in reports), default=0)} "
            f"seconds={sum(r.seconds for r in reports):.0f} skipped={skipped} "
            f"violations={sum(len(r.violations) for r in reports)}")


async def run_rounds(cluster: pg.Cluster, tmp_path: Path, seeds: list[int], runs: int
                     ) -> list[ClusterReport]:
    reports = []
    for n, seed in enumerate(seeds, 1):
        workdir = tmp_path / f"round-{seed}"
        workdir.mkdir()
        url = await pg.create_database(cluster)
        rnd = ClusterRound(workdir, seed, runs, url, cluster.restart, lease=LEASE,
                           scale=SCALE, disruptions=DISRUPTIONS)
        try:
            rep = await asyncio.wait_for(rnd.run(), ROUND_TIMEOUT)
        except TimeoutError:
            rep = rnd.creport  # the round's cleanup ran on the cancellation
            rep.violations.append(f"seed={seed} the round hung ({ROUND_TIMEOUT:.0f} s) "
                                  f"while {rnd.phase}")
        finally:
            await pg.drop_database(cluster, url)
        reports.append(rep)
        sys.stderr.write(f"cluster round {n}/{len(seeds)} {rep.line()}\n")
        for v in rep.violations[:20]:  # at once: a later timeout must not swallow them
            sys.stderr.write(f"  VIOLATION {v}\n")
    sys.stderr.write(summary(reports) + "\n")
    return reports


async def test_two_daemons_on_postgres_survive_disruptions(
    own_cluster: pg.Cluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with capsys.disabled():  # the per-round lines and the total are the campaign's figures
        reports = await run_rounds(own_cluster, tmp_path, ROUNDS, RUNS)
    violations = [v for rep in reports for v in rep.violations]
    assert not violations, "\n".join(violations[:40])


@pytest.mark.skipif("WF_CLUSTER_REPLAY" not in os.environ,
                    reason="replays one round: WF_CLUSTER_REPLAY=<seed> [WF_CLUSTER_RUNS=<n>]")
async def test_replay(own_cluster: pg.Cluster, tmp_path: Path,
                      capsys: pytest.CaptureFixture[str]) -> None:
    seed = int(os.environ["WF_CLUSTER_REPLAY"])
    with capsys.disabled():
        [rep] = await run_rounds(own_cluster, tmp_path, [seed],
                                 int(os.environ.get("WF_CLUSTER_RUNS", RUNS)))
    assert not rep.violations, "\n".join(rep.violations[:40])


@pytest.mark.parametrize(("limit", "violation"), [
    (mw.LIMIT + 1, "runs held a slot at once"),  # more admitted than the limit
    (mw.LIMIT - 1, "a slot leaked"),  # fewer: as if a crash had leaked a slot
])
async def test_the_limit_checks_catch_daemons_enforcing_another_limit(
    own_cluster: pg.Cluster, tmp_path: Path, limit: int, violation: str
) -> None:
    """The twin's checks can fail: both daemons enforce ``limit`` while the checks expect
    ``mw.LIMIT``. One small round with one disruption; the probes after the drain make the
    violation certain (``LIMIT + 1`` runs per group submitted at once)."""
    url = await pg.create_database(own_cluster)
    try:
        rnd = ClusterRound(tmp_path, campaign.SEED, 8, url, own_cluster.restart, lease=LEASE,
                           scale=SCALE, disruptions=1, env={mw.LIMIT_ENV: str(limit)})
        rep = await asyncio.wait_for(rnd.run(), ROUND_TIMEOUT)
    finally:
        await pg.drop_database(own_cluster, url)
    found = [v for v in rep.violations if violation in v]
    assert found, rep.violations
    sys.stderr.write(f"daemon limit {limit}: {rep.line()}\n  caught: {found[0][:400]}\n")
    others = [v for v in rep.violations if "held a slot" not in v and "slot leaked" not in v]
    assert not others, others
