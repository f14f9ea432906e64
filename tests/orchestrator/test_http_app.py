"""The HTTP app in process: a real engine on a SQLite file, driven with httpx's ASGI transport
(no socket). Auth, CSRF, Host check, error mapping, openapi, metrics, mounting."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.routing import Mount

from orchestrator.api import protocol
from orchestrator.config import ConfigError, load_config
from orchestrator.engine.engine import Engine
from orchestrator.http.app import create_app, safe_next
from orchestrator.http.metrics import Metrics
from orchestrator.http.security import host_name
from orchestrator.http.settings import HttpSettings, load_or_create_token
from runtime.clock import ManualClock

TOKEN = "s3cret-token"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
BASE = "http://127.0.0.1:8490"


@pytest.fixture
def metrics() -> Metrics:
    return Metrics(lambda: {"active_actors": 3, "db_bytes": None}, clock=ManualClock(100.0),
                   version="9.9")


@pytest.fixture
async def http(engine: Engine, metrics: Metrics) -> AsyncIterator[httpx.AsyncClient]:
    engine.supervisor.changes.observers.append(metrics.observe_change)
    app = create_app(engine, HttpSettings(token=TOKEN, max_request_bytes=4096), metrics=metrics)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE) as c:
        yield c


async def login(c: httpx.AsyncClient) -> str:
    r = await c.get("/login", params={"token": TOKEN, "next": "/api/v1/stats"})
    assert r.status_code == 303 and r.headers["location"] == "/api/v1/stats"
    cookies = r.headers.get_list("set-cookie")
    session = next(v for v in cookies if v.startswith("wf_session="))
    assert "HttpOnly" in session and "SameSite=strict" in session
    assert TOKEN not in session
    csrf = next(v for v in cookies if v.startswith("wf_csrf="))
    assert "HttpOnly" not in csrf
    return c.cookies["wf_csrf"]


async def test_health_needs_no_token_and_api_does(http: httpx.AsyncClient) -> None:
    assert (await http.get("/healthz")).json() == {"status": "ok"}
    assert (await http.get("/readyz")).json() == {"status": "ready"}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic x"}):
        r = await http.get("/api/v1/stats", headers=headers)
        assert r.status_code == 401
        assert r.json()["error"]["code"] == "UNAUTHORIZED"
        assert "Traceback" not in r.text
    r = await http.get("/metrics")
    assert r.status_code == 401
    r = await http.get("/", follow_redirects=False)  # a page: to the login form
    assert r.status_code == 303 and r.headers["location"] == "/login?next=/"
    page = await http.get("/login")
    assert page.status_code == 200 and 'name="token"' in page.text
    bad = await http.get("/login", params={"token": "nope"})
    assert bad.status_code == 401 and "wf_session" not in bad.headers.get("set-cookie", "")


async def test_host_header_is_checked_on_every_request(http: httpx.AsyncClient) -> None:
    for host in ("127.0.0.1:8490", "localhost", "[::1]:8490"):
        assert (await http.get("/healthz", headers={"Host": host})).status_code == 200
    for host in ("evil.example", "evil.example:8490", "127.0.0.1.evil.example"):
        r = await http.get("/api/v1/stats", headers={**BEARER, "Host": host})
        assert r.status_code == 400 and r.json()["error"]["code"] == "BAD_HOST"
        assert (await http.get("/healthz", headers={"Host": host})).status_code == 400
    assert host_name("[::1]:80") == "::1" and host_name("Example.COM:1") == "example.com"


async def test_cookie_session_needs_csrf_header_for_posts(http: httpx.AsyncClient) -> None:
    csrf = await login(http)
    assert (await http.get("/api/v1/stats")).status_code == 200
    body = {"workflow_id": "echo", "input": {"a": 1}}
    r = await http.post("/api/v1/submit", json=body)
    assert r.status_code == 403 and r.json()["error"]["code"] == "CSRF"
    r = await http.post("/api/v1/submit", json=body, headers={"X-WF-CSRF": "other"})
    assert r.status_code == 403
    r = await http.post("/api/v1/submit", json=body, headers={"X-WF-CSRF": csrf})
    assert r.status_code == 200 and r.json()["workflow_id"] == "echo"
    r = await http.get("/logout", follow_redirects=False)
    assert r.status_code == 303
    http.cookies.clear()
    assert (await http.get("/api/v1/stats")).status_code == 401


async def test_bearer_needs_no_csrf_and_every_error_code_maps(http: httpx.AsyncClient) -> None:
    r = await http.post("/api/v1/submit", json={"workflow_id": "echo", "input": 5,
                                                "run_id": "R1"}, headers=BEARER)
    assert r.status_code == 200, r.text
    r = await http.get("/api/v1/wait", params={"run_id": "R1", "timeout": "5s"}, headers=BEARER)
    assert r.json()["status"] == "completed" and r.json()["output"] == {"echo": 5}
    assert (await http.get("/api/v1/runs/R1", headers=BEARER)).json()["run_id"] == "R1"
    listed = (await http.get("/api/v1/runs", params={"workflow_id": "echo"}, headers=BEARER))
    assert [run["run_id"] for run in listed.json()["runs"]] == ["R1"]
    cases = [
        ("post", "/api/v1/get", {"run_id": "missing"}, 404, "NOT_FOUND"),
        ("post", "/api/v1/nope", {}, 404, "METHOD_NOT_FOUND"),
        ("post", "/api/v1/submit", {"workflow_id": 3, "input": 1}, 400, "INVALID_PARAMS"),
        ("post", "/api/v1/submit", {"workflow_id": "echo"}, 400, "INVALID_PARAMS"),
        ("post", "/api/v1/runs/R1/cancel", {}, 409, "RUN_NOT_ACTIVE"),
        ("post", "/api/v1/submit", {"workflow_id": "no-such-wf", "input": 1}, 404, "NOT_FOUND"),
        ("get", "/api/v1/list?limit=oops", None, 400, "INVALID_PARAMS"),
        ("post", "/api/v1/get", {"run_id": "x" * 5000}, 413, "REQUEST_TOO_LARGE"),
    ]
    for verb, url, body, status, code in cases:
        r = await http.request(verb, url, json=body, headers=BEARER)
        assert (r.status_code, r.json()["error"]["code"]) == (status, code), (url, r.text)
    r = await http.post("/api/v1/get", content=b"{not json", headers=BEARER)
    assert (r.status_code, r.json()["error"]["code"]) == (400, "PARSE_ERROR")
    r = await http.post("/api/v1/get", content=b"[1]", headers=BEARER)
    assert (r.status_code, r.json()["error"]["code"]) == (400, "PARSE_ERROR")
    r = await http.get("/api/v1/submit", headers=BEARER)
    assert r.status_code == 405 and r.headers["allow"] == "POST"
    bad = await http.post("/api/v1/submit", json={"workflow_id": "echo", "input": 1,
                                                  "color": "red"}, headers=BEARER)
    assert bad.json()["error"]["data"]["field"] == "color"


async def test_every_socket_method_has_a_route(http: httpx.AsyncClient) -> None:
    """No method answers METHOD_NOT_FOUND: new request types appear by themselves."""
    for name, spec in protocol.METHODS.items():
        if spec.streaming:  # served as SSE; covered end to end
            continue
        required = {p.name: None for p in spec.params if p.required}
        r = await http.post(f"/api/v1/{name}", json=required, headers=BEARER)
        code = r.json().get("error", {}).get("code") if isinstance(r.json(), dict) else None
        assert code != "METHOD_NOT_FOUND", name
        assert r.status_code < 500, (name, r.text)


async def test_openapi_lists_every_method(http: httpx.AsyncClient) -> None:
    doc = (await http.get("/api/v1/openapi.json", headers=BEARER)).json()
    assert doc["openapi"].startswith("3.")
    assert set(doc["paths"]) == {f"/api/v1/{m}" for m in protocol.METHODS}
    submit = doc["paths"]["/api/v1/submit"]["post"]["requestBody"]["content"]
    schema = submit["application/json"]["schema"]
    assert schema["required"] == ["workflow_id", "input"]
    assert schema["properties"]["priority"] == {"type": "integer", "minimum": -1000,
                                                "maximum": 1000, "default": 0}
    assert "get" in doc["paths"]["/api/v1/changes"]
    assert "get" not in doc["paths"]["/api/v1/cancel"]


async def test_metrics_parse_and_carry_no_run_ids(http: httpx.AsyncClient,
                                                  metrics: Metrics) -> None:
    for i in range(3):
        r = await http.post("/api/v1/submit", json={"workflow_id": "echo", "input": i,
                                                    "run_id": f"M{i}"}, headers=BEARER)
        assert r.status_code == 200
        await http.get("/api/v1/wait", params={"run_id": f"M{i}"}, headers=BEARER)
    text = (await http.get("/metrics", headers=BEARER)).text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    started = families["wf_runs_started"].samples
    assert [(s.labels, s.value) for s in started if s.name.endswith("_total")] == [
        ({"workflow": "echo"}, 3.0)]
    finished = [s for s in families["wf_runs_finished"].samples if s.name.endswith("_total")]
    assert [(s.labels, s.value) for s in finished] == [
        ({"workflow": "echo", "status": "completed"}, 3.0)]
    assert families["wf_run_duration_seconds"].type == "histogram"
    assert families["wf_active_actors"].samples[0].value == 3
    assert "wf_db_bytes" not in families  # None: no sample
    assert families["wf_build_info"].samples[0].labels == {"version": "9.9"}
    requests = {(s.labels["route"], s.labels["code"]): s.value
                for s in families["wf_http_requests"].samples if s.name.endswith("_total")}
    assert requests[("api", "200")] == 6
    for family in families.values():
        for sample in family.samples:
            assert not any(v.startswith("M") and v[1:].isdigit() for v in sample.labels.values())


async def test_mountable_in_an_embedding_app(engine: Engine) -> None:
    inner = create_app(engine, HttpSettings(token=TOKEN))
    outer = Starlette(routes=[Mount("/wf", app=inner)])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=outer), base_url=BASE) as c:
        assert (await c.get("/wf/healthz")).status_code == 200
        assert (await c.get("/wf/api/v1/workflows", headers=BEARER)).status_code == 200
        r = await c.get("/wf/", follow_redirects=False)
        assert r.headers["location"] == "/wf/login?next=/"
        r = await c.get("/wf/login", params={"token": TOKEN})
        assert r.headers["location"] == "/wf/"
        assert "Path=/wf" in r.headers["set-cookie"]


def test_login_redirect_stays_on_this_site() -> None:
    assert safe_next("//evil.example/") == "/"
    assert safe_next("https://evil.example/") == "/"
    assert safe_next("/\\evil") == "/"
    assert safe_next("/runs?status=failed") == "/runs?status=failed"


def test_token_file_is_made_once_with_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "wf.db.http-token"
    token = load_or_create_token(path)
    assert len(token) >= 32 and path.stat().st_mode & 0o777 == 0o600
    assert load_or_create_token(path) == token
    with pytest.raises(ValueError, match="token"):
        HttpSettings(token="")


def test_http_config(tmp_path: Path) -> None:
    conf = tmp_path / "config.toml"
    conf.write_text('[http]\nlisten = "0.0.0.0:8490"\n')
    with pytest.raises(ConfigError, match=r"http\.token"):
        load_config(conf)
    conf.write_text('[http]\nlisten = "0.0.0.0:9000"\ntoken = "t"\nallowed_hosts = ["wf.lan"]\n')
    cfg = load_config(conf)
    settings = HttpSettings.from_config(cfg)
    assert settings.token == "t" and settings.allowed_hosts == {"0.0.0.0", "wf.lan"}
    conf.write_text('[http]\nlisten = "[::1]:8490"\n')
    cfg = load_config(conf)
    assert (cfg.http.host, cfg.http.port) == ("::1", 8490)
    settings = HttpSettings.from_config(cfg)
    assert settings.allowed_hosts == {"localhost", "127.0.0.1", "::1"}
    assert (tmp_path / "wf.db.http-token").stat().st_mode & 0o777 == 0o600
    for bad in ("8490", "localhost", "h:port", "h:99999", 5):
        conf.write_text(f"[http]\nlisten = {bad!r}\n".replace("'", '"'))
        with pytest.raises(ConfigError, match=r"http\.listen"):
            load_config(conf)
    conf.write_text("")
    assert not load_config(conf).http.enabled


def test_wf_dashboard_prints_the_login_url(tmp_path: Path, capsys, monkeypatch) -> None:
    from orchestrator.client import cli

    monkeypatch.chdir(tmp_path)
    conf = tmp_path / "config.toml"
    conf.write_text("")
    assert cli.run(["--config", str(conf), "dashboard", "--no-open"]) == 2
    assert "http.listen" in capsys.readouterr().err
    conf.write_text('[http]\nlisten = "127.0.0.1:8490"\n')
    assert cli.run(["--config", str(conf), "dashboard", "--no-open"]) == 3
    assert "wf daemon" in capsys.readouterr().err  # no token file yet: the daemon never ran
    token = load_or_create_token(tmp_path / "wf.db.http-token")
    assert cli.run(["--config", str(conf), "dashboard", "--no-open"]) == 0
    assert capsys.readouterr().out.strip() == f"http://127.0.0.1:8490/login?token={token}"
    conf.write_text('[http]\nlisten = "[::]:9000"\ntoken = "a b"\n')
    assert cli.run(["--config", str(conf), "dashboard", "--no-open"]) == 0
    assert capsys.readouterr().out.strip() == "http://127.0.0.1:9000/login?token=a%20b"


def test_tallies_become_prometheus_families() -> None:
    """Histograms with their implied counters, plain counters and labelled gauges, as the
    daemon's HTTP side hands them over (tallies from the engine, the writer, the counts)."""
    from orchestrator.http.metrics import Count, LabelledGauge, Tallied
    from storage.tally import Histograms

    steps = Histograms((0.1, 1.0))
    for value in (0.05, 0.1, 0.5, 2.0):
        steps.observe(("wf", "ok"), value)
    metrics = Metrics(tallies=lambda: [
        Tallied("wf_step_duration_seconds", "d", ("workflow", "outcome"), steps.snapshot(),
                "wf_step_attempts", "n"),
        Count("wf_events_received", "e", 3),
        LabelledGauge("wf_waitpoints_waiting", "w", "kind", {"EVENT": 2, "SIGNAL": 1}),
    ])
    families = {f.name: f for f in text_string_to_metric_families(
        metrics.exposition().decode())}
    buckets = {s.labels["le"]: s.value for s in families["wf_step_duration_seconds"].samples
               if s.name.endswith("_bucket")}
    assert buckets == {"0.1": 2, "1.0": 3, "+Inf": 4}  # cumulative; 0.1 falls in le=0.1
    assert [s.value for s in families["wf_step_attempts"].samples] == [4]
    assert [s.value for s in families["wf_events_received"].samples] == [3]
    assert {s.labels["kind"]: s.value for s in families["wf_waitpoints_waiting"].samples} == {
        "EVENT": 2, "SIGNAL": 1}
