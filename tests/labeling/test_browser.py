"""The labeling page's newer modes and tools in a real browser (Debian's chromium driven by
Playwright, against a real `tether label serve`): thumbs ratings by mouse and keyboard, undo,
guidelines, Markdown tables, readable selected buttons, the admin page."""

import os
from pathlib import Path

import pytest
from playwright.sync_api import expect

from tether.labeling.client import ServerProcess
from tether.labeling.export import export_rows
from tether.labeling.projects import create_project
from tether.labeling.store import Store

pytestmark = pytest.mark.browser
CHROMIUM = "/usr/bin/chromium"
# Chromium's background services try to reach Google; this machine has no network for them.
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
ATTACK = ('<script>window.__pwned = "script"</script> '
          '<img src=x onerror="window.__pwned = \'img\'">')


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        if os.environ.get("TETHER_BROWSER_TESTS") == "required":
            pytest.fail(f"{CHROMIUM} is missing: `make test` installs Debian's chromium")
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        yield b
        b.close()


@pytest.fixture
def serve(tmp_path):
    servers = []

    def start(store: Store) -> str:
        server = ServerProcess(tmp_path / "labels.db", tmp_path / "server.log").start()
        servers.append(server)
        return server.url

    yield start
    for server in servers:
        server.stop()


def log_in(browser, url: str, token: str, errors: list):
    page = browser.new_page(viewport={"width": 1366, "height": 768})
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url + "/")
    page.fill("input[name=token]", token)
    page.click("button[type=submit]")
    page.wait_for_url(url + "/label*")
    return page


def next_shown(page, before: str) -> None:
    page.wait_for_function("p => document.querySelector('#progress').innerText !== p",
                           arg=before)


def test_thumbs_by_mouse_and_keyboard_then_kto_export(browser, serve, tmp_path):
    store = Store(str(tmp_path / "labels.db"))
    items = [{"prompt": "Rate this.", "responses": [f"{ATTACK} {i}", f"A fine answer {i}."]}
             for i in range(3)]
    create_project(store, "thumbs", [(f"c.jsonl:{i}", r) for i, r in enumerate(items)],
                   mode="rate")
    url = serve(store)
    errors = []
    page = log_in(browser, url, store.add_annotator("alice"), errors)
    judged = {}  # response text -> the rating given
    for step in range(6):
        page.wait_for_selector(".response-card")
        assert page.locator(".response-card").count() == 1
        text = page.locator(".response-card .card-body").inner_text().strip()
        good = "fine" in text
        before = page.locator("#progress").inner_text()
        if step < 3:  # by mouse
            page.click(f"[data-action='{'good' if good else 'bad'}']")
            expect(page.locator(".card-badge")).to_have_text("Good" if good else "Bad")
            page.click("[data-action='submit']")
        elif step == 5:  # "can't tell" is T here as in every mode
            page.keyboard.press("t")
            page.keyboard.press("Enter")
            good = None
        else:  # by keyboard: G or B, then Enter
            page.keyboard.press("g" if good else "b")
            page.keyboard.press("Enter")
        judged[text] = good
        if step < 5:
            next_shown(page, before)
    page.wait_for_selector("#done", state="visible")
    assert page.locator(".response-card script, .response-card img").count() == 0
    assert page.evaluate("window.__pwned") is None
    assert not errors, errors

    labels = store.labels("thumbs")
    assert len(labels) == 6
    assert {lab["responses"][0].strip(): lab["rating"] for lab in labels} == judged
    rows, _ = export_rows(labels, format="kto")
    assert {r["completion"].strip(): r["label"] for r in rows} == \
        {t: g for t, g in judged.items() if g is not None}
    store.close()
