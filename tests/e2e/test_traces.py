"""Traces through a real daemon (SPEC §12, issue 19): the Python client sends the caller's
current span as ``traceparent``, the daemon (``[telemetry] console = true``) exports the run's
spans under it, and the step body saw its own attempt span as current."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable

import orjson
import pytest
from opentelemetry import trace

from tests.e2e.conftest import Daemon

pytestmark = pytest.mark.slow

CALLER_TRACE = 0x4BF92F3577B34DA6A3CE929D0E0E4736
CALLER_SPAN = 0x00F067AA0BA902B7


async def test_a_run_is_exported_under_the_callers_trace(
    make_daemon: Callable[..., Daemon],
) -> None:
    d = make_daemon(telemetry={"console": True, "service_name": "wf-e2e"})
    caller = trace.SpanContext(CALLER_TRACE, CALLER_SPAN, is_remote=False,
                               trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED))
    async with d.client() as c:
        with trace.use_span(trace.NonRecordingSpan(caller)):
            run = await c.submit("e2e-traced", {})
        done = await c.wait(run["run_id"], timeout=20)
    assert done["status"] == "completed", done
    d.stop_cleanly()  # the batch processor is flushed at shutdown
    out = (d.root / "daemon.1.stdout").read_text()
    spans = {s["name"]: s for s in map(orjson.loads, out.splitlines()) if "context" in s}
    root, step = spans["workflow e2e-traced"], spans["step where"]
    assert root["context"]["trace_id"] == f"0x{CALLER_TRACE:032x}"
    assert root["parent_id"] == f"0x{CALLER_SPAN:016x}"
    assert root["attributes"]["wf.run_id"] == run["run_id"]
    assert root["resource"]["attributes"]["service.name"] == "wf-e2e"
    assert step["context"]["trace_id"] == root["context"]["trace_id"]
    assert step["parent_id"] == root["context"]["span_id"]
    assert step["attributes"]["wf.step_id"] == "where"
    assert done["output"] == f"{CALLER_TRACE:032x}-{step['context']['span_id'][2:]}"


def test_a_malformed_otlp_endpoint_is_a_start_up_error(
    make_daemon: Callable[..., Daemon],
) -> None:
    d = make_daemon(start=False, telemetry={"otlp_endpoint": "collector:4318"})
    proc = subprocess.run([sys.executable, "-m", "orchestrator", "daemon", "--config",
                           str(d.config_path)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert "telemetry.otlp_endpoint" in proc.stderr
