"""The dashboard in a real browser (SPEC §12): Debian's Chromium driven by Playwright against a
real ``wf daemon`` with HTTP on, on a real SQLite file. Log in through ``/login?token=``, see a
run in the list (and a new one appear live), cancel a run by a click, resume a waiting run by
sending its event from the form, a POST without the CSRF header is refused, and no page logs a
console error. Writes ``docs/run-page.png`` (the README's screenshot).

Without ``/usr/bin/chromium`` (or the playwright package) the tests skip, saying so; under CI
(env ``CI`` set) that is a failure instead: ``.ci/system-deps`` installs chromium.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import Daemon, wait_until
from tests.e2e.test_http import http_base, token_of

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "run-page.png"

try:
    from playwright.async_api import Page, async_playwright, expect
except ImportError:  # pragma: no cover - the dev extras carry it
    async_playwright = None


def _require_browser() -> None:
    missing = None
    if async_playwright is None:
        missing = "the playwright package is not installed (pip install -e '.[dev]')"
    elif not os.access(CHROMIUM, os.X_OK):
        missing = f"{CHROMIUM} is missing (apt-get install chromium, or run .ci/system-deps)"
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"browser tests must run under CI: {missing}")
        pytest.skip(f"browser tests skipped: {missing}")


@pytest.fixture
def http_daemon(make_daemon: Callable[..., Daemon]) -> Daemon:
    _require_browser()
    return make_daemon(http={"listen": "127.0.0.1:0"})


@pytest.fixture
async def api(http_daemon: Daemon) -> AsyncIterator[httpx.AsyncClient]:
    headers = {"Authorization": f"Bearer {token_of(http_daemon)}"}
    async with httpx.AsyncClient(base_url=http_base(http_daemon), headers=headers,
                                 timeout=10) as c:
        yield c


class Browser:
    def __init__(self, page: Page, base: str) -> None:
        self.page = page
        self.base = base
        self.errors: list[str] = []
        page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        page.on("pageerror", lambda e: self.errors.append(str(e)))


@pytest.fixture
async def browser(http_daemon: Daemon) -> AsyncIterator[Browser]:
    assert async_playwright is not None
    async with async_playwright() as p:
        chromium = await p.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            context = await chromium.new_context(viewport={"width": 1280, "height": 800})
            page = await context.new_page()
            page.set_default_timeout(10_000)
            b = Browser(page, http_base(http_daemon))
            response = await page.goto(f"{b.base}/login?token={token_of(http_daemon)}")
            assert response is not None and response.ok
            assert page.url == f"{b.base}/"  # the token left the URL
            yield b
            assert b.errors == [], b.errors
        finally:
            await chromium.close()


async def live(page: Page) -> None:
    """Wait until the page's server-sent-event stream is open (so no change is missed)."""
    await page.wait_for_function(
        "(() => { const el = document.querySelector('[sse-connect]');"
        " const src = el && el['htmx-internal-data'] && el['htmx-internal-data'].sseEventSource;"
        " return !!src && src.readyState === 1; })()")


async def shot(page: Page, name: str, tmp_path: Path) -> None:
    """A screenshot of the page as a test artifact: into the test's tmp dir, and into
    ``WF_SCREENSHOTS_DIR`` when that is set (CI uploads it)."""
    dirs = [tmp_path / "screenshots"]
    if os.environ.get("WF_SCREENSHOTS_DIR"):
        dirs.append(Path(os.environ["WF_SCREENSHOTS_DIR"]))
    for d in dirs:
        d.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(d / f"{name}.png"), type="png", full_page=True)


async def submit(api: httpx.AsyncClient, workflow: str, input: Any, run_id: str) -> None:
    r = await api.post("/api/v1/runs", json={"workflow_id": workflow, "input": input,
                                             "run_id": run_id})
    assert r.status_code == 200, r.text


async def status_of(api: httpx.AsyncClient, run_id: str) -> str:
    status: str = (await api.get(f"/api/v1/runs/{run_id}")).json()["status"]
    return status


async def reach(api: httpx.AsyncClient, run_id: str, status: str) -> None:
    async def check() -> bool:
        return await status_of(api, run_id) == status

    await wait_until(check, what=f"{run_id} {status}")


async def test_list_shows_runs_live_and_a_cancel_click_cancels(
        browser: Browser, api: httpx.AsyncClient) -> None:
    page = browser.page
    await submit(api, "e2e-event", {"type": "never"}, "b-cancel")
    await reach(api, "b-cancel", "waiting")
    await page.goto(f"{browser.base}/")
    await expect(page.locator('tr[data-run-id="b-cancel"]')).to_contain_text("waiting")
    # Live: a run submitted now appears and completes without a reload (SSE -> htmx).
    await live(page)
    await submit(api, "e2e-echo", {"x": 1}, "b-live")
    await expect(page.locator('tr[data-run-id="b-live"]')).to_contain_text("completed")
    # "/" focuses the search box.
    await page.keyboard.press("/")
    await expect(page.locator("#search")).to_be_focused()
    await page.keyboard.press("Escape")
    await page.locator("#search").blur()
    await page.click('a[href="/runs/b-cancel"]')
    await expect(page.locator("#waits-for")).to_contain_text("'never'")
    await page.get_by_role("button", name="Cancel", exact=True).click()
    await expect(page.locator("#run-status")).to_have_text("cancelled")
    assert await status_of(api, "b-cancel") == "cancelled"
    # A state-changing request the cookie authenticates but without the CSRF header: 403
    # (the browser logs that refusal; the only console error allowed).
    assert browser.errors == []
    status = await page.evaluate(
        "fetch('/runs/b-cancel/actions/retry', {method: 'POST'}).then(r => r.status)")
    assert status == 403
    assert await status_of(api, "b-cancel") == "cancelled"
    assert len(browser.errors) == 1 and "403" in browser.errors[0]
    browser.errors.clear()


async def test_sending_the_event_from_the_form_resumes_the_waiting_run_and_other_pages(
        browser: Browser, api: httpx.AsyncClient, http_daemon: Daemon, tmp_path: Path) -> None:
    page = browser.page
    await submit(api, "e2e-event", {"type": "approved"}, "b-event")
    await reach(api, "b-event", "waiting")
    await page.goto(f"{browser.base}/runs/b-event")
    await expect(page.locator("#waits-for")).to_contain_text("an event of type 'approved'")
    await expect(page.locator('svg.timeline g[data-kind="wait"]')).to_have_count(1)
    await page.locator('#send-event textarea[name="payload"]').fill('{"by": "alice"}')
    # The dry run names the run this event would resolve, and sends nothing.
    await page.get_by_role("button", name="Which runs would it resolve?").click()
    await expect(page.locator("#event-dry-run-1")).to_contain_text("would resolve 1 waiting run")
    await expect(page.locator('#event-dry-run-1 a[href="/runs/b-event"]')).to_be_visible()
    if os.environ.get("WF_SCREENSHOT") or not SCREENSHOT.exists():
        await page.screenshot(path=str(SCREENSHOT), type="png")
    await shot(page, "run", tmp_path)
    assert await status_of(api, "b-event") == "waiting"
    await page.get_by_role("button", name="Send event").click()
    await expect(page.locator("#run-status")).to_have_text("completed")
    await expect(page.locator("#run-output")).to_contain_text("alice")
    await reach(api, "b-event", "completed")
    run = (await api.get("/api/v1/runs/b-event")).json()
    assert run["output"] == {"payload": {"by": "alice"}}
    await page.goto(f"{browser.base}/workflows")
    await expect(page.locator("main")).to_contain_text("e2e-event")
    await shot(page, "workflows", tmp_path)
    await page.goto(f"{browser.base}/schedules")
    await expect(page.locator("main")).to_contain_text("No schedules")
    # Events: the one just sent, with the run it resolved; another sent from the page's form.
    await page.goto(f"{browser.base}/events")
    sent = page.locator("tr[data-event-id]")
    await expect(sent).to_have_count(1)
    await expect(sent.first).to_contain_text("approved")
    await expect(sent.first.locator('a[href="/runs/b-event"]')).to_be_visible()
    await page.locator('#send-any-event input[name="type"]').fill("ping")
    await page.locator('#send-any-event button[type="submit"]').click()
    await expect(page.locator("#events .flash.ok")).to_contain_text("resolved 0")
    await expect(sent).to_have_count(2)
    await shot(page, "events", tmp_path)
    # Engine health: charts drawn on the server from in-memory figures.
    await page.goto(f"{browser.base}/health")
    await expect(page.locator("figure.chart svg.chart")).to_have_count(13)
    await expect(page.locator('figure[data-chart="runs_finished"]')).to_be_visible()
    await shot(page, "health", tmp_path)
    # Daemons: with SQLite, the one daemon, with its pid and database.
    await page.goto(f"{browser.base}/daemons")
    assert http_daemon.proc is not None
    row = page.locator("[data-daemon]")
    await expect(row).to_have_count(1)
    await expect(row).to_contain_text(str(http_daemon.proc.pid))
    await expect(row).to_contain_text(str(http_daemon.db_path))
    await expect(row).to_contain_text(browser.base.removeprefix("http://"))  # the bound port
    await shot(page, "daemons", tmp_path)
    # Keyboard: the nav links are reachable by Tab from the top of the page.
    await page.keyboard.press("Tab")
    await page.keyboard.press("Tab")
    await expect(page.locator('header nav a[href="/"]')).to_be_focused()
    await page.keyboard.press("Enter")
    await page.wait_for_url(f"{browser.base}/")
    await shot(page, "runs", tmp_path)


async def test_timeline_of_a_retried_step_filters_live_run_page_and_shutdown(
        browser: Browser, api: httpx.AsyncClient, http_daemon: Daemon, tmp_path: Path) -> None:
    page = browser.page
    await submit(api, "e2e-retried", {"counter": str(tmp_path / "calls")}, "b-retry")
    await reach(api, "b-retry", "completed")
    await page.goto(f"{browser.base}/runs/b-retry")
    bars = page.locator("svg.timeline g.bar")
    await expect(bars.and_(page.locator('[data-kind="failed"]'))).to_have_count(2)
    await expect(bars.and_(page.locator('[data-kind="backoff"]'))).to_have_count(2)
    await expect(bars.and_(page.locator('[data-kind="completed"]'))).to_have_count(2)
    await expect(bars.and_(page.locator('[data-kind="sleep"]'))).to_have_count(1)
    await expect(page.locator("#run-output")).to_contain_text("ok after 3")
    # The run page follows its run live: an event sent elsewhere completes it on screen.
    await submit(api, "e2e-event", {"type": "later"}, "b-follow")
    await reach(api, "b-follow", "waiting")
    await page.goto(f"{browser.base}/runs/b-follow")
    await live(page)
    r = await api.post("/api/v1/send_event", json={"type": "later", "payload": 1})
    assert r.status_code == 200 and r.json()["resolved"] == 1
    await expect(page.locator("#run-status")).to_have_text("completed")
    # Filters are deep links.
    await page.goto(f"{browser.base}/")
    await page.select_option('select[name="workflow_id"]', "e2e-retried")
    await page.get_by_role("button", name="Filter").click()
    await page.wait_for_url("**/?*workflow_id=e2e-retried*")
    await expect(page.locator("tr[data-run-id]")).to_have_count(1)
    await expect(page.locator('tr[data-run-id="b-retry"]')).to_be_visible()
    # Full-text search from the keyboard: "/" focuses the box, Enter searches (a deep link).
    await page.goto(f"{browser.base}/")
    await expect(page.locator("tr[data-run-id]")).to_have_count(2)
    await page.keyboard.press("/")
    await page.keyboard.type("later")
    await page.keyboard.press("Enter")
    await page.wait_for_url("**/?search=later")
    await expect(page.locator("tr[data-run-id]")).to_have_count(1)
    await expect(page.locator('tr[data-run-id="b-follow"]')).to_be_visible()
    # SIGTERM with a live page open: the daemon still stops cleanly (its stream ends).
    await live(page)
    assert await asyncio.to_thread(http_daemon.stop) == 0
    browser.errors.clear()  # the page's stream may log its lost connection
