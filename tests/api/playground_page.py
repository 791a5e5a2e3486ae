"""Driving the playground page (GET /playground) in Debian's headless Chromium with Playwright, which
is pointed at that browser and never downloads its own. Shared by tests/api/test_playground.py and
the keyed gateway's test (tests/jobs/test_playground_keys.py)."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from playwright.sync_api import expect, sync_playwright

CHROMIUM = shutil.which("chromium")
# Every wait of a test is bounded by one of these (milliseconds, Playwright's unit).
LAUNCH_MS = 60_000
STEP_MS = 30_000
RUN_MS = 180_000
ROUTES = ("plain", "power", "distilled")


@contextmanager
def browser_page(origin: str) -> Iterator[Any]:
    """A fresh page whose requests may reach ``origin`` only (loopback); any other is aborted and
    fails the test, as does an uncaught script error."""
    # Fails rather than skips without the browser: `make test` installs it (make system-deps).
    assert CHROMIUM is not None, "Debian's chromium is not installed (make system-deps)"
    elsewhere: list[str] = []
    script_errors: list[str] = []

    def only_origin(route: Any) -> None:
        if route.request.url.startswith(origin):
            route.continue_()
        else:
            elsewhere.append(route.request.url)
            route.abort()

    with sync_playwright() as playwright:
        # --no-sandbox: the tests may run as root, where Chromium's sandbox refuses to start.
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox"], timeout=LAUNCH_MS
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 860})
            page.set_default_timeout(STEP_MS)
            page.on("pageerror", lambda error: script_errors.append(str(error)))
            page.route("**/*", only_origin)
            yield page
        finally:
            browser.close()
    assert not elsewhere, f"the page reached beyond {origin}: {elsewhere}"
    assert not script_errors, script_errors


def column(page: Any, route: str) -> Any:
    return page.locator(f'section[data-route="{route}"]')


def stat(page: Any, route: str, name: str) -> str:
    return str(column(page, route).locator(f'[data-stat="{name}"]').inner_text())


def run_prompt(page: Any, prompt: str, max_tokens: int) -> None:
    """Fill the form, press Run, wait until every column has finished (or failed)."""
    page.get_by_label("Prompt").fill(prompt)
    page.get_by_label("Max tokens").fill(str(max_tokens))
    page.get_by_role("button", name="Run").click()
    expect(page.locator("#status")).to_have_text(re.compile(r"^Done"), timeout=RUN_MS)


def assert_answered(page: Any) -> None:
    """Every route answered: text, latency and tokens in each column; the power column also shows
    its cost multiplier, self-reward and sampler report."""
    for route in ROUTES:
        section = column(page, route)
        assert section.get_attribute("data-state") == "done", section.inner_text()
        assert section.locator(".answer").inner_text().strip()
        assert re.fullmatch(r"\d+(\.\d+)? m?s", stat(page, route, "ttft"))
        assert re.match(r"\d+(\.\d+)? m?s", stat(page, route, "total"))
        assert int(stat(page, route, "tokens").split()[0]) >= 1
        assert re.fullmatch(r"-?\d+\.\d{3} per token \(sum -?\d+\.\d{2}\)", stat(page, route, "reward"))
    assert re.fullmatch(r"\d+\.\d×", stat(page, "power", "cost"))
    assert stat(page, "plain", "cost") == "1.0×"
    assert re.fullmatch(r"\d+ \(engine: \d+\)", stat(page, "power", "tokens"))
