"""The dashboard in a real headless Chromium (Debian's), against the local runner.

Playwright drives /usr/bin/chromium; it never downloads a browser. `make test`
installs Debian's chromium when it is missing; CI sets PQH_REQUIRE_BROWSER=1 so a
missing browser fails instead of skipping.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from local.process import LocalSystem

CHROMIUM = Path(os.environ.get("PQH_CHROMIUM", "/usr/bin/chromium"))
# Read when the module is imported: the autouse fixture in tests/conftest.py clears
# every PQH_* variable before each test, so a fixture would never see it.
REQUIRE_BROWSER = os.environ.get("PQH_REQUIRE_BROWSER") == "1"
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
# As root and on a closed network: no sandbox, no background connections.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = pytest.mark.e2e


@pytest.fixture
def browser_page():  # type: ignore[no-untyped-def]
    if not CHROMIUM.exists():
        if REQUIRE_BROWSER:
            pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium package (make browser)")
        pytest.skip(f"{CHROMIUM} is missing: `make browser` installs Debian's chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            yield page
        finally:
            browser.close()


def shown(page, element_id: str) -> str:  # type: ignore[no-untyped-def]
    return str(page.locator(f"#{element_id}").inner_text()).strip()


def test_the_dashboard_shows_the_system_changing_as_tasks_run(
    browser_page, local_system: Callable[..., LocalSystem]
) -> None:  # type: ignore[no-untyped-def]
    # browser_page comes first: a missing browser fails (or skips) before the system starts.
    system = local_system(PQH_CAPACITY="2", PQH_TASK_SECONDS="1")
    page = browser_page
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"{system.base_url}/dashboard?refresh=0.5")
    page.wait_for_function("document.getElementById('status').textContent === 'live'", timeout=20_000)
    assert shown(page, "submitted") == "0" and shown(page, "succeeded") == "0"
    assert shown(page, "running") == "0 / 2"
    # The columns say what they count: tasks running now, and SQS's in-flight count by what it is.
    headers = [h.strip() for h in page.locator("#queues").locator("xpath=..").locator("th").all_inner_texts()]
    assert headers == ["Level", "Queued", "", "Running", "Received, not deleted", "Counted", "Dead letters"]

    task_ids = [system.submit(user)["task_id"] for user in ["alice"] * 5 + ["bob"] * 2]
    # While they run: the page shows them submitted, and some queued or running.
    page.wait_for_function("document.getElementById('submitted').textContent === '7'", timeout=20_000)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard-busy.png"), full_page=True)
    assert "alice" in shown(page, "users")
    # Some are seen running: on the card and in their level's row.
    running_cells = "[...document.querySelectorAll('#queues tr')].map(r => +r.cells[3].textContent)"
    page.wait_for_function(
        f"/^[12] \\/ 2$/.test(document.getElementById('running').textContent) && {running_cells}.some(n => n > 0)",
        timeout=20_000,
    )

    system.wait_all(task_ids, timeout=120)
    page.wait_for_function("document.getElementById('succeeded').textContent === '7'", timeout=20_000)
    page.wait_for_function("document.getElementById('running').textContent === '0 / 2'", timeout=20_000)
    assert shown(page, "queued") == "0"
    assert page.evaluate(running_cells) == [0, 0, 0, 0, 0, 0]
    users = shown(page, "users")
    assert "alice" in users and "bob" in users
    assert shown(page, "recent").count("SUCCESS") == 7
    assert re.fullmatch(r"[0-9.]+ / [0-9.]+", shown(page, "wait"))  # waits of the finished tasks
    # The chart says what its axes measure, and when: clock times along the bottom.
    chart = page.locator("#chart")
    assert chart.locator("#chart-y-label").text_content() == "queued tasks"
    assert chart.locator("#chart-y2-label").text_content() == "wait p50 (s)"
    assert re.fullmatch(r"time \(\d+ s shown\)", str(chart.locator("#chart-x-label").text_content()))
    times = chart.locator("text.x-tick").all_text_contents()
    assert len(times) >= 2 and all(re.fullmatch(r"\d{1,2}:\d{2}:\d{2}", t) for t in times), times
    counts = chart.locator("text.y-tick").all_text_contents()
    assert counts[0] == "0" and all(c.isdigit() for c in counts), counts
    page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
    assert (ARTIFACTS / "dashboard.png").stat().st_size > 10_000
    assert errors == []
