"""The dashboard's pages, fragments, actions and live feed, in process: the real app from
``create_app`` over a real Engine on a SQLite file, driven with httpx's ASGI transport."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import httpx
import pytest

from orchestrator.engine.engine import Engine
from orchestrator.http.app import create_app
from orchestrator.http.dashboard import live, pages, timeline
from orchestrator.http.settings import HttpSettings
from tests.orchestrator.conftest import reach

TOKEN = "dash-token"
BASE = "http://127.0.0.1:8490"


@pytest.fixture
async def browser(engine: Engine) -> AsyncIterator[tuple[httpx.AsyncClient, str]]:
    """A logged-in client (session cookie) and its CSRF value."""
    app = create_app(engine, HttpSettings(token=TOKEN))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE) as c:
        r = await c.get("/login", params={"token": TOKEN})
        assert r.status_code == 303
        yield c, c.cookies["wf_csrf"]


async def test_static_files_need_no_login_and_pages_do(engine: Engine) -> None:
    app = create_app(engine, HttpSettings(token=TOKEN))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE) as c:
        for path, kind in (("/static/htmx.min.js", "javascript"),
                           ("/static/htmx-ext-sse.min.js", "javascript"),
                           ("/static/app.js", "javascript"), ("/static/style.css", "css"),
                           ("/static/favicon.svg", "svg")):
            r = await c.get(path)
            assert r.status_code == 200 and kind in r.headers["content-type"], path
        assert "X-WF-CSRF" in (await c.get("/static/app.js")).text
        for path in ("/", "/runs/x", "/workflows", "/schedules", "/live/runs"):
            r = await c.get(path)
            assert r.status_code == 303 and r.headers["location"].startswith("/login"), path


async def test_runs_page_lists_and_filters(browser: tuple[httpx.AsyncClient, str],
                                           engine: Engine) -> None:
    c, _ = browser
    done = await engine.submit("echo", {"hello": 1}, run_id="run-echo")
    await reach(engine, done["run_id"], "completed")
    await engine.submit("event", {"type": "go"}, run_id="run-wait")
    await reach(engine, "run-wait", "waiting")
    page = await c.get("/")
    assert page.status_code == 200
    assert 'href="/runs/run-echo"' in page.text and 'href="/runs/run-wait"' in page.text
    assert 'sse-connect="/live/runs"' in page.text and 'id="search"' in page.text
    only = await c.get("/", params={"status": "waiting"})
    assert "run-wait" in only.text and "run-echo" not in only.text
    frag = await c.get("/fragments/runs", params={"workflow_id": "echo"})
    assert "run-echo" in frag.text and "run-wait" not in frag.text and "<html" not in frag.text
    recent = await c.get("/", params={"since": "1h", "tag": "none-such"})
    assert "No runs match" in recent.text and '<option value="1h" selected>' in recent.text
    bad = await c.get("/", params={"status": "nope"})
    assert bad.status_code == 200 and "status" in bad.text and 'class="flash error"' in bad.text
    found = await c.get("/", params={"search": "run-echo"})
    if pages.SEARCHABLE:  # the search index: the runs whose text contains it
        assert found.status_code == 200 and 'href="/runs/run-echo"' in found.text
        assert 'href="/runs/run-wait"' not in found.text
    else:  # without a search index the box finds a run by its id
        assert found.status_code == 303 and found.headers["location"] == "/runs/run-echo"


async def test_runs_page_pages_by_creation(browser: tuple[httpx.AsyncClient, str],
                                           engine: Engine, monkeypatch: pytest.MonkeyPatch
                                           ) -> None:
    c, _ = browser
    from orchestrator.http.dashboard import pages
    monkeypatch.setattr(pages, "PAGE_SIZE", 2)
    for i in range(3):
        await engine.submit("echo", i, run_id=f"r{i}")
        await asyncio.sleep(0.002)  # distinct creation times
    first = await c.get("/")
    assert "r2" in first.text and "r1" in first.text and ">r0<" not in first.text
    older = first.text.split('href="/?', 1)[1].split('"', 1)[0].replace("&amp;", "&")
    second = await c.get("/?" + older)
    assert ">r0<" in second.text and ">r2<" not in second.text


async def test_run_page_shows_what_a_parked_run_waits_for_and_the_event_form_resumes_it(
        browser: tuple[httpx.AsyncClient, str], engine: Engine) -> None:
    c, csrf = browser
    await engine.submit("event", {"type": "approved"}, run_id="w1")
    await reach(engine, "w1", "waiting")
    page = await c.get("/runs/w1")
    assert page.status_code == 200
    assert "an event of type &#39;approved&#39;" in page.text
    assert 'id="send-event"' in page.text and 'value="approved"' in page.text
    assert 'data-kind="wait"' in page.text  # the wait's bar on the timeline
    assert 'sse-connect="/live/runs/w1"' in page.text
    form = {"type": "approved", "payload": '{"ok": true}'}
    no_csrf = await c.post("/runs/w1/event", data=form)
    assert no_csrf.status_code == 403
    bad = await c.post("/runs/w1/event", data={"type": "approved", "payload": "{nope"},
                       headers={"X-WF-CSRF": csrf})
    assert bad.status_code == 200 and "payload" in bad.text and "flash error" in bad.text
    sent = await c.post("/runs/w1/event", data=form, headers={"X-WF-CSRF": csrf})
    assert sent.status_code == 200 and "resolved 1" in sent.text and "<html" not in sent.text
    run = await reach(engine, "w1", "completed")
    assert run["output"] == {"ok": True}
    body = await c.get("/fragments/runs/w1")
    assert "completed" in body.text and 'id="send-event"' not in body.text


async def test_run_actions_cancel_retry_and_errors(browser: tuple[httpx.AsyncClient, str],
                                                   engine: Engine) -> None:
    c, csrf = browser
    h = {"X-WF-CSRF": csrf}
    await engine.submit("event", {}, run_id="c1")
    await reach(engine, "c1", "waiting")
    assert (await c.post("/runs/c1/actions/cancel")).status_code == 403
    r = await c.post("/runs/c1/actions/cancel", headers=h)
    assert r.status_code == 200 and "cancel: done" in r.text
    assert (await engine.get("c1"))["status"] == "cancelled"
    again = await c.post("/runs/c1/actions/cancel", headers=h)
    assert "flash error" in again.text  # not active any more, said in words
    retried = await c.post("/runs/c1/actions/retry", data={"mode": "retrigger"}, headers=h)
    assert "retry: done" in retried.text
    assert (await c.post("/runs/c1/actions/explode", headers=h)).status_code == 200
    assert (await c.get("/runs/nope")).status_code == 404
    await engine.submit("fail", None, run_id="f1")
    await reach(engine, "f1", "failed")
    failed = await c.get("/runs/f1")
    assert 'data-kind="failed"' in failed.text and 'id="run-error"' in failed.text


async def test_workflows_and_schedules_pages(browser: tuple[httpx.AsyncClient, str],
                                             engine: Engine) -> None:
    c, csrf = browser
    wf = await c.get("/workflows")
    assert wf.status_code == 200 and ">echo<" in wf.text
    await engine.schedule_create("nightly", "echo", every=3600, input=1)
    page = await c.get("/schedules")
    assert 'data-schedule="nightly"' in page.text and "every 3600s" in page.text
    h = {"X-WF-CSRF": csrf}
    paused = await c.post("/schedules/nightly/pause", headers=h)
    assert "pause nightly: done" in paused.text and ">paused<" in paused.text
    fired = await c.post("/schedules/nightly/trigger", headers=h)
    assert "trigger nightly: done" in fired.text
    assert (await engine.schedules())["schedules"][0]["fired"] == 1
    missing = await c.post("/schedules/nope/resume", headers=h)
    assert "flash error" in missing.text


async def test_live_feed_says_refresh_for_matching_changes(engine: Engine) -> None:
    stream = live.refreshes(engine, "run", lambda ch: ch.get("run_id") == "l1", interval=0)
    async with contextlib.aclosing(stream):
        assert await anext(stream) == b": live\n\n"
        nxt = asyncio.ensure_future(anext(stream))
        await engine.submit("echo", 1, run_id="other")
        await reach(engine, "other", "completed")
        await asyncio.sleep(0.01)
        assert not nxt.done()  # another run's changes do not refresh this page
        await engine.submit("echo", 1, run_id="l1")
        assert await asyncio.wait_for(nxt, 5) == b"event: run\ndata: refresh\n\n"


def test_timeline_bars_for_attempts_backoff_waits_and_compensations() -> None:
    detail = {
        "started_at": 100.0, "finished_at": None,
        "steps": [{"step_id": "pay", "attempt": 2, "status": "completed", "attempts": [
            {"attempt": 1, "status": "failed", "started_at": 100.0, "finished_at": 101.0,
             "error": {"message": "boom"}},
            {"attempt": 2, "status": "completed", "started_at": 103.0, "finished_at": 104.0}]}],
        "waitpoints": [
            {"kind": "DATETIME", "status": "resolved", "registered_at": 104.0,
             "resolved_at": 110.0, "due_at": 110.0},
            {"kind": "EVENT", "status": "waiting", "event_type": "go", "registered_at": 110.0,
             "resolved_at": None}],
        "compensations": [{"step_id": "pay", "status": "completed", "finished_at": 111.0}],
    }
    got = [(b.kind, b.label, b.start, b.end) for b in timeline.bars(detail, now=120.0)]
    assert got == [
        ("failed", "pay #1", 100.0, 101.0), ("backoff", "pay backoff", 101.0, 103.0),
        ("completed", "pay #2", 103.0, 104.0), ("sleep", "sleep", 104.0, 110.0),
        ("wait", "wait event go", 110.0, 120.0), ("compensation", "undo pay", 111.0, 111.0)]
    drawn = timeline.svg(detail, now=120.0)
    assert drawn.count("<rect") == 6 and "boom" in drawn and drawn.startswith("<svg")
    assert "Nothing has run yet" in timeline.svg({"steps": []}, now=1.0)
    # A backoff the runtime recorded as its durable waitpoint is drawn once, from that record.
    detail["waitpoints"] = [{"waitpoint_id": "retry:pay:1", "kind": "DATETIME",
                             "status": "resolved", "registered_at": 101.0,
                             "resolved_at": 103.5, "due_at": 103.0}]
    got = [(b.kind, b.label, b.start, b.end) for b in timeline.bars(detail, now=120.0)]
    assert got[:3] == [("failed", "pay #1", 100.0, 101.0),
                       ("backoff", "pay backoff", 101.0, 103.5),
                       ("completed", "pay #2", 103.0, 104.0)]


async def test_signal_token_and_replay_from_the_run_page(
        browser: tuple[httpx.AsyncClient, str], engine: Engine) -> None:
    c, csrf = browser
    h = {"X-WF-CSRF": csrf}
    await engine.submit("signal", None, run_id="s1")
    await reach(engine, "s1", "waiting")
    page = await c.get("/runs/s1")
    assert 'id="send-signal"' in page.text and "the signal &#39;finish&#39;" in page.text
    r = await c.post("/runs/s1/actions/signal", data={"name": "finish", "payload": "7"},
                     headers=h)
    assert "signal: delivered" in r.text
    assert (await reach(engine, "s1", "completed"))["output"] == 7
    replay = await c.post("/runs/s1/actions/replay", headers=h)
    assert "without divergence" in replay.text
    await engine.submit("token", None, run_id="t1")
    await reach(engine, "t1", "waiting")
    page = await c.get("/runs/t1")
    token_id = (await engine.get("t1"))["waitpoints"][0]["token_id"]
    assert token_id and 'id="complete-token"' in page.text and token_id in page.text
    done = await c.post("/runs/t1/actions/token", headers=h,
                        data={"token_id": token_id, "payload": '"yes"'})
    assert "token: done" in done.text
    assert (await reach(engine, "t1", "completed"))["output"] == "yes"


async def test_bulk_action_counts_first_then_applies(
        browser: tuple[httpx.AsyncClient, str], engine: Engine) -> None:
    c, csrf = browser
    h = {"X-WF-CSRF": csrf}
    for i in range(2):
        await engine.submit("event", {}, run_id=f"b{i}")
        await reach(engine, f"b{i}", "waiting")
    await engine.submit("echo", 1, run_id="e1")
    await reach(engine, "e1", "completed")
    listing = await c.get("/", params={"workflow_id": "event"})
    assert 'id="bulk"' in listing.text and 'name="workflow_id" value="event"' in listing.text
    form = {"workflow_id": "event", "since": "1h", "action": "cancel", "dry_run": "true"}
    assert (await c.post("/bulk", data=form)).status_code == 403
    dry = await c.post("/bulk", data=form, headers=h)
    assert "would apply to 2 of the 2 runs" in dry.text and "Cancel 2 runs" in dry.text
    assert (await engine.get("b0"))["status"] == "waiting"
    applied = await c.post("/bulk", data={**form, "dry_run": "false"}, headers=h)
    assert "done on 2 runs" in applied.text
    for i in range(2):
        await reach(engine, f"b{i}", "cancelled")
    assert (await engine.get("e1"))["status"] == "completed"
    bad = await c.post("/bulk", data={"action": "explode"}, headers=h)
    assert "flash error" in bad.text and "action" in bad.text


async def test_dashboard_under_an_embedding_apps_prefix(engine: Engine) -> None:
    from starlette.applications import Starlette
    from starlette.routing import Mount

    outer = Starlette(routes=[Mount("/wf", app=create_app(engine, HttpSettings(token=TOKEN)))])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=outer), base_url=BASE) as c:
        await c.get("/wf/login", params={"token": TOKEN})
        await engine.submit("echo", 1, run_id="m1")
        page = await c.get("/wf/")
        assert page.status_code == 200
        for link in ('src="/wf/static/htmx.min.js"', 'href="/wf/runs/m1"',
                     'sse-connect="/wf/live/runs"', 'hx-post="/wf/bulk"'):
            assert link in page.text, link
        assert (await c.get("/wf/static/app.js")).status_code == 200
        run = await c.get("/wf/runs/m1")
        assert 'hx-get="/wf/fragments/runs/m1"' in run.text
