"""The daemon's HTTP side end to end: a real ``wf daemon`` on a real SQLite file, driven with
plain httpx over TCP (SPEC §12): token file, login cookie + CSRF, the JSON API with its status
mapping, server-sent events for streaming methods, health, metrics, and a clean SIGTERM while an
event stream is open."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import Daemon

pytestmark = pytest.mark.slow


def http_base(d: Daemon) -> str:
    """The daemon's HTTP address, from its ``daemon.ready`` line (it listens on port 0)."""
    ready = next(r for r in d.log_records() if r.get("event") == "daemon.ready")
    url: str = ready["http"]
    return url.rstrip("/")


def token_of(d: Daemon) -> str:
    path = d.db_path.with_name("wf.db.http-token")
    assert path.stat().st_mode & 0o777 == 0o600
    return path.read_text().strip()


@pytest.fixture
def http_daemon(make_daemon: Callable[..., Daemon]) -> Daemon:
    return make_daemon(http={"listen": "127.0.0.1:0"})


@pytest.fixture
async def api(http_daemon: Daemon) -> AsyncIterator[httpx.AsyncClient]:
    headers = {"Authorization": f"Bearer {token_of(http_daemon)}"}
    async with httpx.AsyncClient(base_url=http_base(http_daemon), headers=headers,
                                 timeout=10) as c:
        yield c


async def sse_events(response: httpx.Response) -> AsyncIterator[tuple[str, Any]]:
    """(event name, data) per server-sent event; the name is "message" when none is given."""
    name = "message"
    async for line in response.aiter_lines():
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            yield name, orjson.loads(line[6:])
            name = "message"


async def test_api_over_tcp_against_a_real_daemon(http_daemon: Daemon,
                                                  api: httpx.AsyncClient) -> None:
    assert (await api.get("/healthz")).status_code == 200
    assert (await api.get("/readyz")).json() == {"status": "ready"}
    r = await api.post("/api/v1/submit", json={"workflow_id": "e2e-echo", "input": {"x": 1}})
    assert r.status_code == 200, r.text
    run_id = r.json()["run_id"]
    done = (await api.get("/api/v1/wait", params={"run_id": run_id, "timeout": "5s"})).json()
    assert (done["status"], done["output"]) == ("completed", {"echo": {"x": 1}})
    # The SPEC's status mapping, each from the real daemon.
    r = await api.post("/api/v1/submit", json={"workflow_id": "e2e-validated", "input": {}})
    assert (r.status_code, r.json()["error"]["code"]) == (400, "VALIDATION")
    r = await api.post(f"/api/v1/runs/{run_id}/cancel", json={})
    assert (r.status_code, r.json()["error"]["code"]) == (409, "RUN_NOT_ACTIVE")
    assert r.json()["error"]["data"]["status"] == "completed"
    r = await api.get("/api/v1/runs/nope")
    assert (r.status_code, r.json()["error"]["code"]) == (404, "NOT_FOUND")
    r = await api.post("/api/v1/complete_token", json={"token_id": "t-missing", "payload": 1})
    assert r.status_code == 404
    r = await api.get("/api/v1/stats", headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401 and "Traceback" not in r.text
    r = await api.get("/api/v1/stats", headers={"Host": "attacker.example"})
    assert r.status_code == 400
    # The socket sees what HTTP did: one store, two front ends.
    async with http_daemon.client() as c:
        assert (await c.get(run_id))["status"] == "completed"
    # Metrics: parsed by prometheus-client's own parser.
    text = (await api.get("/metrics")).text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    finished = {(s.labels["workflow"], s.labels["status"]): s.value
                for s in families["wf_runs_finished"].samples if s.name.endswith("_total")}
    assert finished[("e2e-echo", "completed")] == 1
    assert families["wf_db_bytes"].samples[0].value > 0
    assert run_id not in text
    # Each SPEC §12 family the run fed, from the engine's and the writer's in-memory tallies.
    def total(name: str, **labels: str) -> float:
        return sum(s.value for s in families[name].samples if s.name == f"{name}_total"
                   and all(s.labels.get(k) == v for k, v in labels.items()))

    assert total("wf_runs_submitted", workflow="e2e-echo") == 1
    assert total("wf_runs_started", workflow="e2e-echo") == 1
    assert total("wf_step_attempts", workflow="e2e-echo", outcome="ok") == 1
    steps = families["wf_step_duration_seconds"]
    assert steps.type == "histogram"
    assert [s.value for s in steps.samples if s.name.endswith("_count")
            and s.labels["workflow"] == "e2e-echo"] == [1]
    commits = families["wf_storage_commit_seconds"].samples
    assert next(s.value for s in commits if s.name.endswith("_count")) >= 2
    inf = [s for s in families["wf_storage_batch_requests"].samples
           if s.name.endswith("_bucket") and s.labels["le"] == "+Inf"]
    assert inf and inf[0].value >= 2
    assert total("wf_events_received") == 0
    # A sleep's timer and an event: timer lag by kind, events received.
    sleep = (await api.post("/api/v1/submit", json={"workflow_id": "e2e-sleep",
                                                    "input": {"seconds": 0.05}})).json()
    await api.post("/api/v1/send_event", json={"type": "metrics.test", "payload": {}})
    await api.get("/api/v1/wait", params={"run_id": sleep["run_id"], "timeout": "5s"})
    families = {f.name: f for f in text_string_to_metric_families((await api.get("/metrics")).text)}
    assert total("wf_events_received") == 1
    assert total("wf_timers_fired", kind="sleep") == 1
    assert families["wf_timer_lag_seconds"].type == "histogram"


async def test_streaming_methods_are_server_sent_events(http_daemon: Daemon,
                                                        api: httpx.AsyncClient) -> None:
    async with api.stream("GET", "/api/v1/changes") as changes:
        assert changes.headers["content-type"].startswith("text/event-stream")
        events = sse_events(changes)
        r = await api.post("/api/v1/submit", json={"workflow_id": "e2e-stream", "input": {}})
        run_id = r.json()["run_id"]
        seen = []
        async for _name, change in events:
            if change.get("run_id") == run_id:
                seen.append(change["status"])
                if change["status"] == "completed":
                    break
        assert seen[0] == "pending" and seen[-1] == "completed"
    params = {"run_id": run_id, "stream_id": "out"}
    async with api.stream("GET", "/api/v1/stream", params=params) as chunks:
        got = [(name, data) async for name, data in sse_events(chunks)]
    assert "".join(d["chunk"] or "" for n, d in got if n == "message") == "hello stream world"
    assert got[-1][0] == "end"
    async with api.stream("POST", "/api/v1/watch", json={"run_id": "nope"}) as missing:
        assert missing.status_code == 200  # the error comes in the stream, as on the socket
        got = [(name, data) async for name, data in sse_events(missing)]
    assert got == [("error", {"code": "NOT_FOUND", "message": "run 'nope' not found",
                              "data": {"run_id": "nope"}})]


async def test_login_cookie_csrf_and_sigterm_with_a_stream_open(http_daemon: Daemon) -> None:
    token = token_of(http_daemon)
    out = http_daemon.cli("--config", str(http_daemon.config_path), "dashboard", "--no-open")
    assert out.returncode == 0, out.stderr
    url = out.stdout.strip()
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/login\?token=\S+", url) and token in url
    async with httpx.AsyncClient(base_url=http_base(http_daemon), timeout=10) as browser:
        r = await browser.get(url.split(":", 2)[2].partition("/")[2].join(["/", ""]))
        assert r.status_code == 303 and r.headers["location"] == "/"
        assert browser.cookies["wf_session"] and browser.cookies["wf_csrf"]
        assert (await browser.get("/api/v1/workflows")).status_code == 200
        body = {"workflow_id": "e2e-echo", "input": 1}
        r = await browser.post("/api/v1/submit", json=body)
        assert (r.status_code, r.json()["error"]["code"]) == (403, "CSRF")
        r = await browser.post("/api/v1/submit", json=body,
                               headers={"X-WF-CSRF": browser.cookies["wf_csrf"]})
        assert r.status_code == 200
        # SIGTERM with an event stream open: the daemon still stops cleanly (exit 0).
        async with browser.stream("GET", "/api/v1/changes") as stream:
            assert stream.status_code == 200
            http_daemon.stop_cleanly()


def test_non_loopback_listen_without_a_token_exits_2(make_daemon: Callable[..., Daemon]) -> None:
    d = make_daemon(start=False, http={"listen": "0.0.0.0:0"})
    proc = subprocess.run([sys.executable, "-m", "orchestrator", "daemon", "--config",
                           str(d.config_path)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert "http.token" in proc.stderr
