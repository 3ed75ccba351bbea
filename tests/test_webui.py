"""The web chat in headless Chromium (Debian's `chromium`, driven by Playwright): load the
page, send a message, watch the reply stream in, switch on "look inside" and find
probability-tinted tokens with their alternatives on hover. A screenshot is saved in the
test's tmp dir."""

from __future__ import annotations

import os
import time

import pytest

CHROMIUM = os.environ.get("CENTELHA_CHROMIUM", "/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium; make test does)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield browser
        browser.close()


@pytest.fixture()
def page(browser, smollm2_server):
    context = browser.new_context(viewport={"width": 1280, "height": 800}, locale="pt-BR")
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(smollm2_server.url + "/")
    yield page
    context.close()
    assert not errors, errors


def test_chat_streams_and_look_inside_tints_tokens(page, tmp_path):
    # the page speaks the browser's language and found the server's model
    assert page.locator("#send").inner_text() == "Enviar"
    page.wait_for_function("document.querySelector('#model').options.length > 0")
    assert page.locator("#model").input_value() == "smollm2-135m-instruct"
    page.click("#settings-button")
    page.eval_on_selector("#temperature", "el => { el.value = 0; }")
    page.fill("#max-tokens", "60")

    page.fill("#prompt", "Explique em poucas frases o que é uma capital.")
    page.click("#send")
    reply = page.locator(".message.assistant .body").last
    lengths = set()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        streaming = page.locator(".message.streaming").count() > 0
        lengths.add(len(reply.inner_text()))
        if not streaming:
            break
        time.sleep(0.05)
    text = reply.inner_text()
    assert text.strip()
    # text appeared piece by piece: several lengths seen while it streamed
    assert len({n for n in lengths if 0 < n < len(text)}) >= 2, lengths
    # the conversation is listed and kept
    assert page.locator("#conversations li").count() == 1
    assert "capital" in page.evaluate("localStorage.getItem('centelha.conversations')")

    page.check("#look-inside")
    tokens = page.locator(".message.assistant .token")
    assert tokens.count() > 5
    assert "".join(tokens.all_inner_texts()) == text
    probabilities = [float(p) for p in tokens.evaluate_all("els => els.map(e => e.dataset.p)")]
    assert all(0 < p <= 1 for p in probabilities)
    tint = tokens.first.evaluate("el => getComputedStyle(el).backgroundColor")
    assert tint not in ("rgba(0, 0, 0, 0)", "transparent")
    assert page.locator("#legend").is_visible()

    tokens.nth(2).hover()
    tooltip = page.locator("#tooltip")
    tooltip.wait_for(state="visible")
    assert tooltip.locator("tr").count() == 5
    assert "%" in tooltip.inner_text()
    page.screenshot(path=str(tmp_path / "look-inside.png"), full_page=True)
    assert (tmp_path / "look-inside.png").stat().st_size > 10_000


def test_stop_button_ends_a_reply(page):
    page.wait_for_function("document.querySelector('#model').options.length > 0")
    page.click("#settings-button")
    page.fill("#max-tokens", "2000")
    page.fill("#prompt", "Write a very long story about a lighthouse.")
    page.click("#send")
    page.locator("#stop").wait_for(state="visible")
    page.wait_for_function(
        "document.querySelector('.message.assistant .body').textContent.length > 5")
    page.click("#stop")
    page.locator("#send").wait_for(state="visible", timeout=10_000)
    assert page.locator(".message.streaming").count() == 0
    assert page.locator(".message.error").count() == 0
