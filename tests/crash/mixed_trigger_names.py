"""Names and sizes of ``mixed_triggers``' workflows, for the driver and its checks.

Kept apart from the workflows: importing ``mixed_triggers`` registers them (a schedule every
0.25 s among them) in the default registry, so a test process that imports the driver would
hand that schedule to every later test's engine built on the default registry.
"""

from __future__ import annotations

START_EVENT = "mix.start"
BATCH_EVENT = "mix.batch"
TRIGGERED = "mix-triggered"
BATCHED = "mix-batch"
TICK = "mix-tick"
BATCH_SIZE = 3
BATCH_TIMEOUT = 0.5
TICK_EVERY = 0.25


def triggered_run_id(event_id: str) -> str:
    """The id ``send_event`` gives the run it starts (``orchestrator.engine.triggers``)."""
    return f"evt:{TRIGGERED}:{event_id}"
