"""The web chat in headless Chromium (Debian's `chromium`, driven by Playwright): load the
page, send a message, watch the reply stream in, switch on "look inside" and find
probability-tinted tokens with their alternatives on hover. A screenshot is saved in the
test's tmp dir. Also: broken or full localStorage, log-probs only with "look inside", the
conversation list by keyboard, and a streaming reply that grows instead of being redrawn."""

from __future__ import annotations

import json
import os
import time

import pytest

pytestmark = pytest.mark.slow  # `make test-fast` leaves these out

try:
    from playwright.sync_api import expect
except ImportError:  # the `browser` fixture skips these tests
    expect = None

CHROMIUM = os.environ.get("CENTELHA_CHROMIUM", "/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
CONVERSATIONS = "centelha.conversations"
SETTINGS = "centelha.settings"


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
def open_page(browser, smollm2_server):
    """`open_page(init_script=None, locale="pt-BR")`: the chat page in a fresh context, with
    `init_script` run before the page's own scripts. No page may raise an uncaught error."""
    contexts = []
    errors: list[str] = []

    def open_(init_script: str | None = None, locale: str = "pt-BR"):
        context = browser.new_context(viewport={"width": 1280, "height": 800}, locale=locale)
        contexts.append(context)
        if init_script:
            context.add_init_script(init_script)
        page = context.new_page()
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(smollm2_server.url + "/")
        return page

    yield open_
    for context in contexts:
        context.close()
    assert not errors, errors


@pytest.fixture()
def page(open_page):
    return open_page()


def seeded(entries: dict[str, str]) -> str:
    """An init script that puts `entries` (raw strings) in localStorage once per tab, so a
    reload sees what the page itself wrote."""
    return f"""
        if (!sessionStorage.getItem("seeded")) {{
          sessionStorage.setItem("seeded", "1");
          for (const [key, value] of Object.entries({json.dumps(entries)})) {{
            localStorage.setItem(key, value);
          }}
        }}"""


def ask(page, text: str, max_tokens: int = 8):
    """Send `text` at temperature 0 and wait for the whole reply; returns its body."""
    page.wait_for_function("document.querySelector('#model').options.length > 0")
    page.eval_on_selector("#temperature", "el => { el.value = 0; }")
    page.eval_on_selector("#max-tokens", "(el, n) => { el.value = n; }", max_tokens)
    replies = page.locator(".message.assistant")
    before = replies.count()
    page.fill("#prompt", text)
    page.click("#send")
    expect(replies).to_have_count(before + 1, timeout=5_000)
    expect(page.locator(".message.streaming")).to_have_count(0, timeout=120_000)
    return page.locator(".message.assistant .body").last


def stored(page, key: str = CONVERSATIONS):
    return json.loads(page.evaluate("key => localStorage.getItem(key)", key))


def test_chat_streams_and_look_inside_tints_tokens(page, tmp_path):
    # the page speaks the browser's language and found the server's model
    assert page.locator("#send").inner_text() == "Enviar"
    page.wait_for_function("document.querySelector('#model').options.length > 0")
    assert page.locator("#model").input_value() == "smollm2-135m-instruct"
    page.click("#settings-button")
    page.eval_on_selector("#temperature", "el => { el.value = 0; }")
    page.fill("#max-tokens", "60")
    # log-probs are asked for (and kept) only with "look inside" on
    page.check("#look-inside")

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

    # switched off and on again, the reply is drawn the same from what was kept
    page.uncheck("#look-inside")
    assert page.locator(".message.assistant .token").count() == 0
    assert reply.inner_text() == text
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


# -- localStorage that cannot be read -----------------------------------------------------------
UNREADABLE = {"pt": ("Não foi possível ler as conversas salvas",
                     "Não foi possível ler os ajustes salvos"),
              "en": ("Saved conversations could not be read", "Saved settings could not be read")}


@pytest.mark.parametrize(("broken", "broken_settings", "locale"), [
    ("{not json", "{not json", "en-US"),
    ("{not json", "{not json", "pt-BR"),
    ('{"title": "an object, not a list"}', '"a string, not an object"', "pt-BR"),
    ("[1, 2, 3]", "[1, 2, 3]", "pt-BR"),
    ("null", "null", "pt-BR"),
])
def test_unreadable_storage_does_not_blank_the_page(open_page, broken, broken_settings, locale):
    page = open_page(seeded({CONVERSATIONS: broken, SETTINGS: broken_settings}), locale=locale)
    conversations_notice, settings_notice = UNREADABLE[locale[:2]]
    notices = page.locator("#notices")
    expect(notices).to_contain_text(conversations_notice, timeout=5_000)
    expect(notices).to_contain_text(settings_notice)
    assert notices.is_visible()
    # the page is all there and the chat works
    assert page.locator("#send").inner_text() == ("Enviar" if locale == "pt-BR" else "Send")
    assert ask(page, "Olá!").inner_text().strip()
    assert page.locator("#conversations li").count() == 1
    # what was unreadable is kept aside, and what the page writes now reads back
    assert page.evaluate(f"localStorage.getItem('{CONVERSATIONS}.unreadable')") == broken
    assert [m["role"] for m in stored(page)[0]["messages"]] == ["user", "assistant"]
    page.reload()
    expect(page.locator("#conversations li")).to_have_count(1)
    expect(page.locator(".notice")).to_have_count(0)


def test_readable_conversations_survive_next_to_broken_ones(open_page):
    good = {"id": "a", "title": "Boa", "messages": [{"role": "user", "content": "oi"}]}
    bad = {"id": "b", "title": "Ruim", "messages": [{"role": "user", "content": 7}]}
    page = open_page(seeded({CONVERSATIONS: json.dumps([good, 7, bad])}))
    expect(page.locator("#conversations li")).to_have_count(1, timeout=5_000)
    assert page.locator("#conversations li").inner_text().startswith("Boa")
    expect(page.locator("#notices")).to_contain_text(UNREADABLE["pt"][0])
    assert page.locator(".message.user .body").inner_text() == "oi"


# -- localStorage that cannot be written --------------------------------------------------------
THROWING_STORAGE = """
    Storage.prototype.setItem = function () {
      throw new DOMException("The quota has been exceeded.", "QuotaExceededError");
    };"""


def test_full_storage_keeps_the_conversation_in_the_page(open_page):
    page = open_page(THROWING_STORAGE)
    first = ask(page, "Diga olá.").inner_text()
    assert first.strip()
    assert page.locator("#conversations li").count() == 1
    notices = page.locator("#notices")
    expect(notices).to_contain_text("Não foi possível salvar a conversa")
    assert notices.is_visible()
    # the conversation goes on in the page (the fixture checks no error escaped)
    assert ask(page, "E agora, tchau.").inner_text().strip()
    assert page.locator(".message").count() == 4
    assert page.locator(".message.error").count() == 0


def test_nearly_full_storage_drops_the_probabilities_first(open_page):
    # room for a conversation's text, not for its log-probs
    page = open_page("""
        const setItem = Storage.prototype.setItem;
        Storage.prototype.setItem = function (key, value) {
          if (String(value).length > 2000) {
            throw new DOMException("The quota has been exceeded.", "QuotaExceededError");
          }
          return setItem.call(this, key, value);
        };""")
    page.check("#look-inside")
    ask(page, "Conte uma história curta.", max_tokens=40)
    assert page.locator(".message.assistant .token").count() > 10
    expect(page.locator("#notices")).to_contain_text("salvas sem as probabilidades")
    reply = stored(page)[0]["messages"][1]
    assert "tokens" not in reply and reply["content"].strip()


# -- log-probs only with "look inside" -------------------------------------------------------------
def test_logprobs_are_asked_for_and_kept_only_with_look_inside(page):
    bodies = []
    page.on("request", lambda r: bodies.append(r.post_data_json)
            if r.url.endswith("/v1/chat/completions") else None)

    text = ask(page, "Diga uma palavra.", max_tokens=20).inner_text()
    assert "logprobs" not in bodies[0] and "top_logprobs" not in bodies[0], bodies[0]
    raw = page.evaluate(f"localStorage.getItem('{CONVERSATIONS}')")
    reply = json.loads(raw)[0]["messages"][1]
    assert set(reply) == {"role", "content", "model"}, reply
    assert len(raw) < 200 + 2 * len(text) + len("Diga uma palavra.")

    # an old reply seen from inside: plain text and a hint, no made-up tints
    page.check("#look-inside")
    old = page.locator(".message.assistant").first
    assert old.locator(".token").count() == 0
    assert old.locator(".body").inner_text() == text
    expect(old.locator(".hint")).to_contain_text("Sem probabilidades")

    ask(page, "Diga outra palavra.", max_tokens=20)
    assert bodies[1]["logprobs"] is True and bodies[1]["top_logprobs"] == 5
    new = page.locator(".message.assistant").last
    assert new.locator(".token").count() > 0
    assert new.locator(".hint").count() == 0
    first, second = [m for m in stored(page)[0]["messages"] if m["role"] == "assistant"]
    assert "tokens" not in first
    tokens = second["tokens"]
    assert tokens and all(len(token["top"]) == 5 for token in tokens)
    assert len(json.dumps(tokens)) / len(tokens) < 150  # bytes per token, alternatives included


# -- the conversation list by keyboard -----------------------------------------------------------
TWO_CONVERSATIONS = [
    {"id": "a", "title": "Capitais", "messages": [
        {"role": "user", "content": "Qual é a capital do Brasil?"},
        {"role": "assistant", "content": "Brasília.", "model": "smollm2-135m-instruct"}]},
    {"id": "b", "title": "Cores", "messages": [
        {"role": "user", "content": "De que cor é o céu?"},
        {"role": "assistant", "content": "Azul.", "model": "smollm2-135m-instruct"}]},
]


def focused_text(page) -> str:
    return page.evaluate("document.activeElement.textContent")


def test_conversation_list_works_by_keyboard(open_page):
    page = open_page(seeded({CONVERSATIONS: json.dumps(TWO_CONVERSATIONS)}))
    messages = page.locator("#messages")
    expect(messages).to_contain_text("Brasília.", timeout=5_000)
    page.focus("#new-chat")
    seen = []
    for _ in range(6):
        page.keyboard.press("Tab")
        seen.append(focused_text(page))
        if seen[-1] == "Cores":
            break
    assert seen[-1] == "Cores", f"Tab never reached the second conversation: {seen}"
    focus_ring = page.evaluate("""() => {
        const el = document.activeElement;
        return el.matches(":focus-visible") && getComputedStyle(el).outlineStyle !== "none"
            && parseFloat(getComputedStyle(el).outlineWidth) > 0;
    }""")
    assert focus_ring, "keyboard focus is not visible"

    page.keyboard.press("Enter")
    expect(messages).to_contain_text("Azul.")
    assert "Brasília." not in messages.inner_text()
    assert focused_text(page) == "Cores"  # focus stays on the opened item
    assert page.locator("#conversations [aria-current=true]").inner_text() == "Cores"

    page.keyboard.press("Shift+Tab")  # the first conversation's delete button
    page.keyboard.press("Shift+Tab")
    assert focused_text(page) == "Capitais"
    page.keyboard.press("Space")
    expect(messages).to_contain_text("Brasília.")
    assert page.locator("#conversations [aria-current=true]").inner_text() == "Capitais"


# -- a streaming reply grows; it is not redrawn --------------------------------------------------
WATCH_REPLY_BODIES = """() => {
    window.bodyRemovals = 0;
    new MutationObserver((records) => {
      for (const record of records) {
        if (record.target.closest && record.target.closest(".message.assistant .body")) {
          window.bodyRemovals += record.removedNodes.length;
        }
      }
    }).observe(document.getElementById("messages"), { childList: true, subtree: true });
}"""
LAST_BODY = "document.querySelector('#messages .message.assistant:last-child .body')"


@pytest.mark.parametrize("look_inside", [False, True], ids=["text", "tokens"])
def test_streaming_appends_to_the_reply(page, look_inside):
    page.wait_for_function("document.querySelector('#model').options.length > 0")
    if look_inside:
        page.check("#look-inside")
    page.eval_on_selector("#temperature", "el => { el.value = 0; }")
    page.eval_on_selector("#max-tokens", "el => { el.value = 40; }")
    page.evaluate(WATCH_REPLY_BODIES)
    page.fill("#prompt", "Conte uma história curta sobre um gato.")
    page.click("#send")
    page.wait_for_function(f"{LAST_BODY} && {LAST_BODY}.textContent.length > 0")
    page.evaluate(f"{LAST_BODY}.firstChild.firstOfReply = true")
    expect(page.locator(".message.streaming")).to_have_count(0, timeout=120_000)

    assert page.evaluate("window.bodyRemovals") == 0, "the reply was redrawn while it streamed"
    assert page.evaluate(f"{LAST_BODY}.firstChild.firstOfReply === true"), "the reply was redrawn"
    reply = stored(page)[0]["messages"][1]
    body = page.locator(".message.assistant .body").last
    assert body.text_content() == reply["content"] and len(reply["content"]) > 20
    if look_inside:
        assert body.locator(".token").count() == len(reply["tokens"])
