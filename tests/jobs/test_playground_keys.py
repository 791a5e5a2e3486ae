"""The playground page (GET /playground) on the jobs gateway, which has API keys: the page itself is
open, asks for a key when /v1 answers 401, keeps it in the tab's sessionStorage only and sends it
with every call. Without keys: tests/api/test_playground.py."""

from __future__ import annotations

import re

from playwright.sync_api import expect

from tests.api.playground_page import assert_answered, browser_page, run_prompt
from tests.conftest import TINY_MODEL_NAME
from tests.jobs.conftest import KEYS, JobsGateway


def test_the_page_asks_for_a_key_and_sends_it(jobs_gateway: JobsGateway) -> None:

    key = KEYS["alice"][0]
    url = jobs_gateway.service.url
    with browser_page(url) as page:
        page.goto(f"{url}/playground")
        key_input = page.get_by_label("API key")
        expect(key_input).to_be_focused()
        expect(page.locator("#status")).to_have_text(re.compile("didn't provide an API key"))

        key_input.fill("sk-wrong")
        key_input.press("Enter")
        expect(page.locator("#status")).to_have_text("Incorrect API key provided.")
        expect(key_input).to_be_focused()

        key_input.fill(key)
        key_input.press("Tab")  # a changed key is kept and the models are listed with it
        model = page.get_by_label("Model")
        model.locator(f'option[value="{TINY_MODEL_NAME}"]').wait_for(state="attached")
        kept = "() => [sessionStorage.getItem('powerserve.apiKey'), localStorage.length]"
        assert page.evaluate(kept) == [key, 0]

        run_prompt(page, "a b", max_tokens=3)
        assert_answered(page)

        page.reload()  # the same tab still has its key: no question asked
        model.locator(f'option[value="{TINY_MODEL_NAME}"]').wait_for(state="attached")
        assert key_input.input_value() == key
        assert page.locator("#status").inner_text() == ""
