"""Scale of the crash checks: small in CI, large under ``make reliability``.

``WF_CAMPAIGN=1`` switches to campaign size; ``SEED`` (default: from the clock, printed) drives
the kill moments, so a failing seed replays the same schedule and can become a regression test.
"""

from __future__ import annotations

import os
import sys
import time

CAMPAIGN = os.environ.get("WF_CAMPAIGN") == "1"
SEED = int(os.environ.get("SEED") or (int(time.time()) % 100_000 if CAMPAIGN else 1))
if CAMPAIGN:
    sys.stderr.write(f"reliability campaign: SEED={SEED}\n")


def rounds(ci: int, campaign: int) -> list[int]:
    """Seeds for ``ci`` rounds in CI or ``campaign`` rounds in the campaign, from SEED."""
    return list(range(SEED, SEED + (campaign if CAMPAIGN else ci)))


def occurrences() -> list[int]:
    return [1, 2, 10] if CAMPAIGN else [1]
