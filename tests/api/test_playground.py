"""GET /playground: its files on a bare app (types, the policy that keeps it off other hosts, open
without a key), then the page in headless Chromium against the tiny model's three routes. Its
screenshot is kept with the test's output; with POWERSERVE_UPDATE_SCREENSHOTS=1 it also replaces the
one the docs show (docs/images/playground.png)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from loadtests.harness import ServiceProcess
from service.api.errors import install_error_handlers
from service.api.guards import KeyCheck
from service.api.routes import playground
from service.limits import KeyRing
from tests.api.playground_page import assert_answered, browser_page, column, run_prompt
from tests.conftest import TINY_MODEL_NAME

DOCS_SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "images" / "playground.png"


@pytest.fixture
def page_client() -> TestClient:
    """The playground's routes behind the key check, with a key configured."""
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(playground.router)
    keys = KeyRing.from_settings("alice=sk-alice", None)
    app.add_middleware(KeyCheck, keys=keys, metrics_require_key=True)
    return TestClient(app)


def test_the_page_and_its_files_are_served_with_their_types(page_client: TestClient) -> None:
    page = page_client.get("/playground")  # no key: the page holds no data
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert 'src="playground/playground.js"' in page.text
    assert page.headers["content-security-policy"] == "default-src 'self'"
    for name, media_type in (("playground.js", "text/javascript"), ("playground.css", "text/css")):
        asset = page_client.get(f"/playground/{name}")
        assert asset.status_code == 200
        assert asset.headers["content-type"].split(";")[0] == media_type
        assert "http://" not in asset.text and "https://" not in asset.text  # nothing from a CDN
    missing = page_client.get("/playground/index.py")
    assert missing.status_code == 404
    assert missing.json()["error"]["message"]


def test_the_page_streams_the_three_routes_side_by_side(
    tiny_service: ServiceProcess, tmp_path: Path
) -> None:
    with browser_page(tiny_service.url) as page:
        page.goto(f"{tiny_service.url}/playground")
        model = page.get_by_label("Model")
        model.locator(f'option[value="{TINY_MODEL_NAME}"]').wait_for(state="attached")
        assert model.input_value() == TINY_MODEL_NAME
        assert page.locator("#key-field").is_hidden()  # this service has no keys
        for route, suffix in (("plain", ""), ("power", "-power"), ("distilled", "-distilled")):
            assert column(page, route).locator(".model-id").inner_text() == TINY_MODEL_NAME + suffix

        # The method picks which of its parameters is shown (and sent).
        page.get_by_label("Method").select_option("mh")
        assert page.get_by_label("MCMC steps per block").is_visible()
        assert page.get_by_label("Particles").is_hidden()
        page.get_by_label("Method").select_option("smc")
        page.get_by_label("Particles").fill("3")
        page.get_by_label("Alpha (sharpening)").fill("4")

        run_prompt(page, "a b", max_tokens=4)
        assert_answered(page)
        sampler = column(page, "power").locator('[data-stat="sampler"]').inner_text()
        assert sampler.startswith("smc · α 4 · 3 particles")

        shot = tmp_path / "playground.png"
        page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000  # a page, not a blank
    if os.environ.get("POWERSERVE_UPDATE_SCREENSHOTS") == "1":
        shutil.copyfile(shot, DOCS_SCREENSHOT)
