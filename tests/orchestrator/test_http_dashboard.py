"""The dashboard's pages, fragments, actions and live feed, in process: the real app from
``create_app`` over a real Engine on a SQLite file, driven with httpx's ASGI transport."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator

import httpx
import pytest

from orchestrator.engine.engine import Engine
from orchestrator.http.app import create_app
from orchestrator.http.dashboard import live, timeline
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
    # Full-text search: text in an input finds its run; the box keeps what was typed.
    found = await c.get("/", params={"search": "hello"})
    assert "run-echo" in found.text and "run-wait" not in found.text
    assert 'value="hello"' in found.text
    short = await c.get("/", params={"search": "he"})
    assert 'class="flash error"' in short.text and "3 characters" in short.text


async def test_search_works_with_filters_paging_and_bulk(
        browser: tuple[httpx.AsyncClient, str], engine: Engine,
        monkeypatch: pytest.MonkeyPatch) -> None:
    c, csrf = browser
    from orchestrator.http.dashboard import pages
    monkeypatch.setattr(pages, "PAGE_SIZE", 2)
    for i in range(3):
        await engine.submit("event", {"type": "never", "customer": "acme"}, run_id=f"a{i}")
        await reach(engine, f"a{i}", "waiting")
        await asyncio.sleep(0.002)  # distinct creation times
    await engine.submit("event", {"type": "never", "customer": "globex"}, run_id="g0")
    await reach(engine, "g0", "waiting")
    await engine.submit("echo", {"customer": "acme"}, run_id="e0")
    await reach(engine, "e0", "completed")
    query = {"search": "acme", "status": "waiting"}
    first = await c.get("/", params=query)
    assert ">a2<" in first.text and ">a1<" in first.text
    assert ">a0<" not in first.text and ">g0<" not in first.text and ">e0<" not in first.text
    older = first.text.split('rel="next"', 1)[0].rsplit('href="/?', 1)[1].split('"', 1)[0]
    older = older.replace("&amp;", "&")
    assert "search=acme" in older and "status=waiting" in older  # the pager keeps the query
    second = await c.get("/?" + older)
    assert ">a0<" in second.text and ">a2<" not in second.text and ">g0<" not in second.text
    # The live fragment and the bulk form carry the search too.
    assert 'hx-get="/fragments/runs?status=waiting&amp;search=acme"' in first.text
    assert '<input type="hidden" name="search" value="acme">' in first.text
    dry = await c.post("/bulk", headers={"X-WF-CSRF": csrf},
                       data={"search": "acme", "action": "cancel", "dry_run": "true"})
    assert "would apply to 3 of the 4 runs" in dry.text  # e0 has ended: not eligible


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


async def test_events_page_lists_what_each_event_did_and_the_forms_dry_run_and_send(
        browser: tuple[httpx.AsyncClient, str], engine: Engine,
        monkeypatch: pytest.MonkeyPatch) -> None:
    c, csrf = browser
    h = {"X-WF-CSRF": csrf}
    await engine.submit("event", {"type": "paid"}, run_id="ev1")
    await reach(engine, "ev1", "waiting")
    empty = await c.get("/events")
    assert empty.status_code == 200 and "No stored events" in empty.text
    assert 'aria-current="page">Events' in empty.text
    # The run page's resolve form has the dry run too: it names the run, sends nothing.
    run_page = await c.get("/runs/ev1")
    assert 'hx-post="/events/dry-run"' in run_page.text
    form = {"type": "paid", "payload": '{"n": 1}'}
    assert (await c.post("/events/dry-run", data=form)).status_code == 403
    dry = await c.post("/events/dry-run", data=form, headers=h)
    assert "would resolve 1 waiting run" in dry.text and 'href="/runs/ev1"' in dry.text
    assert (await engine.get("ev1"))["status"] == "waiting"
    assert (await engine.events())["events"] == []
    bad = await c.post("/events/dry-run", data={"type": "paid", "payload": "{"}, headers=h)
    assert "flash error" in bad.text and "payload" in bad.text
    sent = await c.post("/events/send", data={**form, "event_id": "e-1"}, headers=h)
    assert "event e-1 sent: resolved 1" in sent.text and 'data-event-id="e-1"' in sent.text
    await reach(engine, "ev1", "completed")
    await engine.send_event("other", None, event_id="e-2")
    page = await c.get("/events")
    rows = page.text.split('data-event-id="')
    assert [r.split('"', 1)[0] for r in rows[1:]] == ["e-2", "e-1"]
    assert 'href="/runs/ev1"' in rows[2] and "none" in rows[1]
    only = await c.get("/events", params={"type": "paid"})
    assert 'data-event-id="e-1"' in only.text and 'data-event-id="e-2"' not in only.text
    from orchestrator.http.dashboard import events
    monkeypatch.setattr(events, "PAGE_SIZE", 1)
    first = await c.get("/events")
    assert 'data-event-id="e-2"' in first.text and 'data-event-id="e-1"' not in first.text
    older = first.text.split('rel="next"', 1)[0].rsplit('href="/events?', 1)[1]
    second = await c.get("/events?" + older.split('"', 1)[0].replace("&amp;", "&"))
    assert 'data-event-id="e-1"' in second.text and "« newest" in second.text


async def test_health_page_charts_in_memory_figures_and_daemons_lists_this_one(
        engine: Engine) -> None:
    from orchestrator.http.daemons import DaemonInfo
    from orchestrator.http.history import History
    from orchestrator.http.metrics import Metrics
    from runtime.clock import ManualClock

    clock = ManualClock(1_000.0)
    figures = {"storage_ops": 0.0, "storage_batches": 0.0, "active_actors": 2.0}
    metrics = Metrics(lambda: figures, clock=clock)
    history = History(metrics.figures, clock=clock, interval=10, keep=6)
    a = DaemonInfo(name="h:1", pid=1, host="h", version="9.9", started_at=400.0,
                   database="/d/wf.db", socket="/d/wf.sock", http="127.0.0.1:8490")
    b = DaemonInfo(name="h2:7", pid=7, host="h2", version="9.9", started_at=900.0, this=False)
    app = create_app(engine, HttpSettings(token=TOKEN), metrics=metrics, history=history,
                     daemons=lambda: (a, b))
    for i in range(4):  # 100 writes in 10 commits per 10 s; a run ending each interval
        history.sample()
        figures["storage_ops"] += 100
        figures["storage_batches"] += 10
        metrics.observe_change(f"r{i}", "pending", "echo")
        clock.advance(5)
        metrics.observe_change(f"r{i}", "completed", "echo")
        clock.advance(5)
    assert history.rate("storage_ops") == [(1010.0, 10.0), (1020.0, 10.0), (1030.0, 10.0)]
    assert history.ratio("storage_ops", "storage_batches")[-1] == (1030.0, 10.0)
    assert history.ratio("run_duration_sum", "run_duration_count")[-1] == (1030.0, 5.0)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE) as c:
        await c.get("/login", params={"token": TOKEN})
        page = await c.get("/health")
        assert page.status_code == 200 and len(history.samples) == 5  # the view sampled
        for key in ("runs_finished", "storage_ops", "batch_size", "run_latency",
                    "active_actors", "timers_fired", "timer_lag"):
            assert f'data-chart="{key}"' in page.text, key
        chart = page.text.split('data-chart="batch_size"', 1)[1].split("</figure>", 1)[0]
        assert "<polyline" in chart and "last 10" in chart
        assert "collecting samples" in page.text.split('data-chart="timers_fired"')[1][:900]
        daemons = await c.get("/daemons")
        assert daemons.status_code == 200
        assert 'data-daemon="h:1"' in daemons.text and 'data-daemon="h2:7"' in daemons.text
        assert "/d/wf.db" in daemons.text and "(serving this page)" in daemons.text
        assert "10.7 min" in daemons.text  # h:1 up since 400, now 1040
    # The default: this process, one daemon.
    plain = create_app(engine, HttpSettings(token=TOKEN))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=plain), base_url=BASE) as c:
        await c.get("/login", params={"token": TOKEN})
        listed = await c.get("/daemons")
        assert listed.text.count("data-daemon=") == 1 and f">{os.getpid()}<" in listed.text
        assert (await c.get("/health")).status_code == 200


async def test_run_page_shows_a_forks_origin_and_the_audit_trail(
        browser: tuple[httpx.AsyncClient, str], engine: Engine) -> None:
    c, _ = browser
    await engine.submit("fail", None, run_id="f1")
    await reach(engine, "f1", "failed")
    await engine.amend("f1", "boom", {"fixed": 1}, "fixed by hand")
    page = await c.get("/runs/f1")
    assert 'id="run-audit"' in page.text and "fixed by hand" in page.text
    assert "FATAL" in page.text  # the old value: the step's error
    await engine.fork("f1", run_id_new="f2", reason="try again")
    fork = await c.get("/runs/f2")
    assert "Forked from" in fork.text and 'href="/runs/f1"' in fork.text
    assert "try again" in fork.text


async def test_run_page_pause_resume_fork_amend_and_child_links(
        browser: tuple[httpx.AsyncClient, str], engine: Engine) -> None:
    c, csrf = browser
    h = {"X-WF-CSRF": csrf}
    await engine.submit("signal", None, run_id="p1")
    await reach(engine, "p1", "waiting")
    paused = await c.post("/runs/p1/actions/pause", headers=h)
    assert "pause: done" in paused.text and "/runs/p1/actions/resume" in paused.text
    assert (await engine.get("p1"))["status"] == "paused"
    resumed = await c.post("/runs/p1/actions/resume", headers=h)
    assert "resume: done" in resumed.text
    await reach(engine, "p1", "waiting")
    kept = await c.post("/runs/p1/actions/cancel", data={"compensate": "false"}, headers=h)
    assert "cancel: done" in kept.text and (await engine.get("p1"))["status"] == "cancelled"
    # A failed run: amend its failing step from the form, then fork it from a step.
    await engine.submit("fail", None, run_id="f1")
    await reach(engine, "f1", "failed")
    page = await c.get("/runs/f1")
    assert 'id="fork"' in page.text and 'id="amend"' in page.text
    assert (await c.post("/runs/f1/actions/amend", data={"step_id": "boom"})).status_code == 403
    bad = await c.post("/runs/f1/actions/amend", headers=h,
                       data={"step_id": "boom", "output": "{nope", "reason": "x"})
    assert "flash error" in bad.text and "output" in bad.text
    amended = await c.post("/runs/f1/actions/amend", headers=h,
                           data={"step_id": "boom", "output": '{"fixed": 1}', "reason": "hand"})
    assert "amend: the step" in amended.text and 'id="run-audit"' in amended.text
    forked = await c.post("/runs/f1/actions/fork", headers=h,
                          data={"from_step": "boom", "input": "", "reason": "again"})
    new = forked.text.split("forked as ", 1)[1].split("<", 1)[0].strip()
    assert f'href="/runs/{new}"' in forked.text
    assert (await engine.get(new))["forked_from"]["run_id"] == "f1"
    # A parent's waitpoint for its child links to the child's page.
    await engine.submit("parent", {"child": "signal"}, run_id="pa")
    await reach(engine, "pa", "waiting")
    parent = await c.get("/runs/pa")
    assert 'href="/runs/pa-signal-0"' in parent.text
    assert (await c.get("/runs/pa-signal-0")).status_code == 200
    assert 'href="/runs/pa"' in (await c.get("/runs/pa-signal-0")).text  # and back


async def test_schedule_backfill_from_the_page(browser: tuple[httpx.AsyncClient, str],
                                               engine: Engine) -> None:
    c, csrf = browser
    await engine.schedule_create("daily", "echo", cron="0 3 * * *", overlap="allow")
    page = await c.get("/schedules")
    assert 'hx-post="/schedules/daily/backfill"' in page.text
    form = {"start": "2026-01-01T03:00:00Z", "end": "2026-01-02T03:00:00Z"}
    assert (await c.post("/schedules/daily/backfill", data=form)).status_code == 403
    done = await c.post("/schedules/daily/backfill", data=form, headers={"X-WF-CSRF": csrf})
    assert "backfill daily: 2 runs" in done.text
    assert (await engine.get("sched:daily:2026-01-01T03:00:00Z"))["triggered_by"] == "schedule"
    bad = await c.post("/schedules/daily/backfill", data={"start": "soon", "end": "x"},
                       headers={"X-WF-CSRF": csrf})
    assert "flash error" in bad.text and "start" in bad.text


async def test_a_cancel_with_compensation_shows_the_saga_on_the_run_page(
        browser: tuple[httpx.AsyncClient, str], engine: Engine) -> None:
    c, csrf = browser
    await engine.submit("reserve-wait", None, run_id="sg")
    await reach(engine, "sg", "waiting")
    r = await c.post("/runs/sg/actions/cancel", headers={"X-WF-CSRF": csrf})
    assert "cancel: done" in r.text
    await reach(engine, "sg", "cancelled")
    page = await c.get("/runs/sg")
    saga = page.text.split("<h2>Compensations</h2>", 1)[1].split("</table>", 1)[0]
    assert ">reserve<" in saga and ">completed<" in saga
    assert 'data-kind="compensation"' in page.text  # its bar on the timeline
