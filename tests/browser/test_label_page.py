"""The labeling page in a real browser: Debian's chromium, driven by Playwright, against a real
`tether label serve`. An annotator logs in with a token, labels three items by mouse and three
by keyboard, and the export holds exactly those six labels; untrusted responses stay text."""

import pytest
from playwright.sync_api import expect

from tether.labeling.client import ServerProcess
from tether.labeling.export import export_rows
from tether.labeling.projects import create_project
from tether.labeling.store import Store

pytestmark = pytest.mark.browser

ATTACK = ('Try this: <script>window.__pwned = "script"</script> and '
          '<img src=x onerror="window.__pwned = \'img\'"> or '
          '[a prize](javascript:window.__pwned="link")')
MARKDOWN = "**Great** film.\n\n- sharp `dialogue`\n- a [review](https://example.org/r)"


@pytest.fixture
def app(tmp_path):
    store = Store(str(tmp_path / "labels.db"))
    items = [{"prompt": "Review the film.", "responses": [ATTACK, "A calm, fair review."]}]
    items += [{"prompt": [{"role": "system", "content": "You review films."},
                          {"role": "user", "content": f"Film {i}?"}],
               "responses": [f"{MARKDOWN} ({i})", f"Plain answer {i}."]} for i in range(7)]
    project = create_project(store, "films", [(f"c.jsonl:{i}", r) for i, r in enumerate(items)])
    store.set_priorities("films", {store.items("films")[0].id: 1.0})  # the attack comes first
    token = store.add_annotator("alice")
    server = ServerProcess(tmp_path / "labels.db", tmp_path / "server.log").start()
    yield server.url, token, store, project
    server.stop()
    store.close()


def shown(page) -> list[str]:
    """The responses' texts, in the order the page shows them."""
    return [c.inner_text() for c in page.locator(".response-card .card-body").all()]


def progress(page) -> str:
    return page.locator("#progress").inner_text()


def test_login_label_by_mouse_and_keyboard_then_export(browser, app, tmp_path):
    url, token, store, _ = app
    page = browser.new_page(viewport={"width": 1366, "height": 768})
    errors = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))

    page.goto(url + "/")
    page.fill("input[name=token]", token)
    page.click("button[type=submit]")
    page.wait_for_url(url + "/label*")
    page.wait_for_selector(".response-card")

    # The first item carries a script tag, an onerror image and a javascript: link.
    texts = shown(page)
    attack = texts.index(next(t for t in texts if "Try this" in t))
    assert "<script>" in texts[attack] and "onerror" in texts[attack]
    cards = page.locator(".response-card")
    assert cards.locator("script").count() == 0 and cards.locator("img").count() == 0
    assert cards.locator("a[href^='javascript']").count() == 0
    assert page.evaluate("window.__pwned") is None

    chosen = []  # the text the annotator preferred, each time
    for _ in range(3):  # by mouse: A is better, then Submit
        before = progress(page)
        chosen.append(shown(page)[0])
        page.click("[data-action='a-better']")
        page.click("[data-action='submit']")
        page.wait_for_function("p => document.querySelector('#progress').innerText !== p",
                               arg=before)
    for _ in range(3):  # by keyboard: 2 (B is better), then Enter
        before = progress(page)
        chosen.append(shown(page)[1])
        page.keyboard.press("2")
        page.keyboard.press("Enter")
        page.wait_for_function("p => document.querySelector('#progress').innerText !== p",
                               arg=before)
    assert "6" in progress(page)
    assert page.evaluate("window.__pwned") is None
    # Markdown rendered as markup (bold, list, an https link), the conversation as turns
    assert page.locator(".response-card strong").count() >= 1
    assert page.locator(".response-card a[href='https://example.org/r']").count() >= 1
    page.screenshot(path=str(tmp_path / "label_page.png"))
    assert not errors, errors

    labels = store.labels("films")
    assert len(labels) == 6 and {lab["annotator"] for lab in labels} == {"alice"}
    rows, counts = export_rows(labels)
    assert counts["rows"] == 6
    # the page shows Markdown rendered; every response here ends in a distinct plain suffix
    assert sorted(r["chosen"].strip()[-4:] for r in rows) == \
        sorted(t.strip()[-4:] for t in chosen)


def test_my_answers_and_rank_mode_by_keyboard(browser, tmp_path):
    store = Store(str(tmp_path / "labels.db"))
    create_project(store, "rank", [("c.jsonl:1", {"prompt": "Rank these.",
                                                  "responses": ["one", "two", "three"]})])
    token = store.add_annotator("bob")
    server = ServerProcess(tmp_path / "labels.db", tmp_path / "server.log").start()
    try:
        page = browser.new_page()
        page.goto(server.url + "/")
        page.fill("input[name=token]", token)
        page.click("button[type=submit]")
        page.wait_for_selector(".response-card")
        texts = shown(page)
        # a: select card A, then its rank; the selection moves on to B, then C
        page.keyboard.press("a")
        for text in texts:
            page.keyboard.press({"one": "1", "two": "2", "three": "2"}[text.strip()])
        page.keyboard.press("Enter")
        page.wait_for_selector("#done", state="visible")
        [label] = store.labels("rank")
        assert label["ranks"] == [0, 1, 1]  # canonical order, the tie kept
        page.keyboard.press("m")
        expect(page.locator("#my-answers")).to_contain_text("Rank these.")  # waits for it
    finally:
        server.stop()
        store.close()
