"""The labeling page's newer modes and tools in a real browser (Debian's chromium driven by
Playwright, against a real `tether label serve`): thumbs ratings by mouse and keyboard, undo,
guidelines, Markdown tables, readable selected buttons, the admin page."""

import pytest
from playwright.sync_api import expect

from tether.labeling.client import ServerProcess
from tether.labeling.export import export_rows
from tether.labeling.projects import create_project
from tether.labeling.store import Store

pytestmark = pytest.mark.browser
ATTACK = ('<script>window.__pwned = "script"</script> '
          '<img src=x onerror="window.__pwned = \'img\'">')


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


TABLE = ("| Film | Stars |\n| :--- | --: |\n| *Heat* | 5 |\n"
         "| <script>window.__pwned = 'table'</script> | a \\| b |")
GUIDE = f"# How to rank\n\nPrefer the **accurate** answer.\n\n{TABLE}\n"


def rgb(css: str) -> tuple[float, ...]:
    return tuple(float(x) for x in css[css.index("(") + 1:css.index(")")].split(",")[:3])


def contrast(fg: str, bg: str) -> float:
    """WCAG contrast ratio of two computed CSS colours."""
    def luminance(c):
        lin = [v / 255 / 12.92 if v / 255 <= 0.03928 else ((v / 255 + 0.055) / 1.055) ** 2.4
               for v in rgb(c)]
        return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]
    hi, lo = sorted([luminance(fg), luminance(bg)], reverse=True)
    return (hi + 0.05) / (lo + 0.05)


def colours(page, selector: str) -> tuple[str, str]:
    return page.eval_on_selector(selector, "e => [getComputedStyle(e).color, "
                                           "getComputedStyle(e).backgroundColor]")


def test_guidelines_tables_readable_selection_and_undo(browser, serve, tmp_path):
    store = Store(str(tmp_path / "labels.db"))
    create_project(store, "rank", [("c.jsonl:1", {"prompt": "Rank these.", "responses": [
        f"one\n\n{TABLE}", "two", "three"]})], guidelines=GUIDE)
    url = serve(store)
    errors = []
    page = log_in(browser, url, store.add_annotator("bob"), errors)
    page.wait_for_selector(".response-card")
    # Guidelines open for someone who has not started; Markdown tables render as tables
    expect(page.locator("#guidelines")).to_be_visible()
    guide = page.locator("#guidelines")
    assert guide.locator("h1").inner_text() == "How to rank"
    assert guide.locator("thead th").all_inner_texts() == ["Film", "Stars"]
    assert guide.locator("tbody tr").count() == 2
    assert guide.locator("tbody td em").inner_text() == "Heat"
    assert guide.locator("th.align-right").count() == 1
    assert guide.locator("tbody tr").nth(1).locator("td").nth(1).inner_text() == "a | b"
    assert "<script>" in guide.locator("tbody tr").nth(1).inner_text()
    assert page.locator("script:not([src])").count() == 0
    assert page.locator(".response-card table").count() == 1
    page.keyboard.press("?")
    expect(page.locator("#guidelines")).to_be_hidden()
    assert "Ctrl+Enter" in page.locator(".rationale-label").inner_text()
    assert page.locator("[data-action='cant-tell'] kbd").inner_text() == "T"

    # A clicked rank stays readable under the mouse
    button = ".response-card[data-slot='A'] [data-rank='1']"
    page.click(button)
    page.hover(button)
    fg, bg = colours(page, button)
    assert rgb(fg) == (255, 255, 255) and contrast(fg, bg) >= 4.5, (fg, bg)
    # and so does "My answers" once pressed
    page.keyboard.press("m")
    page.hover("#toggle-answers")
    fg, bg = colours(page, "#toggle-answers")
    assert page.get_attribute("#toggle-answers", "aria-pressed") == "true"
    assert contrast(fg, bg) >= 4.5, (fg, bg)
    page.keyboard.press("m")

    texts = [c.inner_text().strip().split("\n")[0] for c in
             page.locator(".response-card .card-body").all()]
    page.keyboard.press("a")
    for text in texts:
        page.keyboard.press({"one": "1", "two": "2", "three": "3"}[text])
    page.fill("#rationale", "one is right")
    page.keyboard.press("Control+Enter")  # from the rationale box
    page.wait_for_selector("#done", state="visible")
    assert store.labels("rank")[0]["ranks"] == [0, 1, 2]

    # Undo: the item comes back with the answer given, to change
    page.keyboard.press("u")
    page.wait_for_selector(".response-card")
    pressed = [page.locator(".response-card").nth(i).locator("[aria-pressed='true']")
               .inner_text() for i in range(3)]
    assert pressed == [{"one": "1", "two": "2", "three": "3"}[t] for t in texts]
    assert page.input_value("#rationale") == "one is right"
    assert store.labels("rank") == []
    three = texts.index("three")
    page.click(f".response-card[data-index='{three}'] [data-rank='1']")
    page.click("[data-action='submit']")
    page.wait_for_selector("#done", state="visible")
    [label] = store.labels("rank")
    assert label["ranks"] == [0, 1, 0] and label["rationale"] == "one is right"
    assert page.evaluate("window.__pwned") is None
    assert not errors, errors
    store.close()


def test_admin_page_lists_reissues_and_revokes(browser, serve, tmp_path):
    store = Store(str(tmp_path / "labels.db"))
    create_project(store, "p", [(f"c.jsonl:{i}", {"prompt": f"p{i}", "responses": ["x", "y"]})
                                for i in range(2)])
    boss, alice = store.add_annotator("boss", admin=True), store.add_annotator("alice")
    url = serve(store)
    errors = []
    page = log_in(browser, url, boss, errors)
    page.click("#admin-link")
    page.wait_for_url(url + "/admin")
    row = page.locator("tr[data-annotator='alice']")
    expect(row).to_contain_text("p: 0 of 2 labelled, no gold yet")
    expect(page.locator("#projects-table")).to_contain_text("0 of 2")
    assert page.locator("tr[data-annotator='boss'] [data-admin]").count() == 0  # not yourself
    row.locator("[data-admin='token']").click()
    token = page.locator("#new-token .token")
    expect(token).to_be_visible()
    new = token.inner_text().strip()
    assert store.annotator_for_token(alice) is None
    assert store.annotator_for_token(new).name == "alice"
    page.on("dialog", lambda d: d.accept())
    row.locator("[data-admin='revoke']").click()
    expect(row).to_contain_text("revoked")
    assert store.annotator_for_token(new) is None
    page.fill("#new-name", "carol")
    page.click("#add-annotator button[type=submit]")
    expect(page.locator("tr[data-annotator='carol']")).to_contain_text("active")
    assert store.annotator_for_token(token.inner_text().strip()).name == "carol"
    assert not errors, errors
    store.close()


def test_done_page_says_the_last_item_is_held_by_someone_else(browser, serve, tmp_path):
    store = Store(str(tmp_path / "labels.db"))
    project = create_project(store, "p", [("c.jsonl:1", {"prompt": "p", "responses": ["x", "y"]})])
    store.next_item(project, store.annotator_for_token(store.add_annotator("bob")))
    url = serve(store)
    errors = []
    page = log_in(browser, url, store.add_annotator("alice"), errors)
    page.wait_for_selector("#done", state="visible")
    assert page.locator("#progress").inner_text() == "0 of 1 labelled · 1 in progress by others"
    assert page.locator("#done-title").inner_text() == "Nothing to label right now"
    assert "being labelled by someone else" in page.locator("#done").inner_text()
    assert not errors, errors
    store.close()


def test_markdown_tables_edge_cases(browser, serve, tmp_path):
    """TetherMarkdown.render on tables, in the page's own browser: what is a table and what
    stays text, and a cell can neither run script nor carry a javascript: link."""
    store = Store(str(tmp_path / "labels.db"))
    create_project(store, "p", [("c.jsonl:1", {"prompt": "p", "responses": ["x", "y"]})])
    url = serve(store)
    errors = []
    page = log_in(browser, url, store.add_annotator("a"), errors)
    page.wait_for_selector(".response-card")
    render = """src => { const d = document.createElement('div');
        d.append(window.TetherMarkdown.render(src)); return d.innerHTML; }"""
    cases = {
        # header and delimiter cell counts differ: not a table
        "| a | b |\n| --- |\n| 1 | 2 |": "<p>| a | b |<br>| --- |<br>| 1 | 2 |</p>",
        # no pipe in the header line: a paragraph, then a rule-like line stays text
        "a b\n--- | ---": "<p>a b<br>--- | ---</p>",
        # a paragraph interrupted by a table; short rows padded, long rows cut
        "Intro\na | b\n--|--\n1\n1 | 2 | 3": (
            '<p>Intro</p><div class="table-wrap"><table><thead><tr><th>a</th><th>b</th></tr>'
            "</thead><tbody><tr><td>1</td><td></td></tr><tr><td>1</td><td>2</td></tr></tbody>"
            "</table></div>"),
        "| x |\n|:-:|\n| [go](javascript:alert(1)) <img src=x onerror=alert(1)> |": (
            '<div class="table-wrap"><table><thead><tr><th class="align-center">x</th></tr>'
            '</thead><tbody><tr><td class="align-center">[go](javascript:alert(1)) '
            "&lt;img src=x onerror=alert(1)&gt;</td></tr></tbody></table></div>"),
    }
    for src, html in cases.items():
        assert page.evaluate(render, src) == html, src
    wide = page.evaluate(render, "|" * 5000 + "\n" + "|-" * 2500)
    assert wide.count("<th>") <= 64
    assert not errors, errors
    store.close()


def test_mode_both_switches_between_ratings_and_comparisons(browser, serve, tmp_path):
    """One candidate row, mode=both: a comparison and two ratings, served in any order; the
    page shows the right buttons and keys for each, and undo brings a rating back."""
    store = Store(str(tmp_path / "labels.db"))
    create_project(store, "both", [("c.jsonl:1", {"prompt": "Say hi.",
                                                  "responses": ["Hello!", "Go away."]})],
                   mode="both")
    url = serve(store)
    errors = []
    page = log_in(browser, url, store.add_annotator("a"), errors)
    for _ in range(3):
        page.wait_for_selector(".response-card")
        before = page.locator("#progress").inner_text()
        actions = page.locator("#choices [data-action]").evaluate_all(
            "bs => bs.map(b => b.dataset.action)")
        if page.locator(".response-card").count() == 1:
            assert actions == ["good", "bad", "cant-tell"]
            text = page.locator(".card-body").inner_text().strip()
            page.keyboard.press("g" if text == "Hello!" else "b")
        else:
            assert actions == ["a-better", "b-better", "tie", "both-bad", "cant-tell"]
            page.keyboard.press("1" if shown_first(page) == "Hello!" else "2")
        page.keyboard.press("Enter")
        next_shown(page, before)
    page.wait_for_selector("#done", state="visible")
    labels = store.labels("both")
    assert sorted(lab["choice"] for lab in labels) == ["bad", "good", "rank"]
    judged = {(tuple(lab["responses"]), lab["choice"], str(lab["ranks"])) for lab in labels}
    assert judged == {(("Hello!",), "good", "None"), (("Go away.",), "bad", "None"),
                      (("Hello!", "Go away."), "rank", "[0, 1]")}  # canonical order
    last = labels[-1]
    page.keyboard.press("u")
    page.wait_for_selector(".response-card")
    pressed = page.locator("#choices [aria-pressed='true']")
    if len(last["responses"]) == 1:
        expect(pressed).to_have_attribute("data-action", last["choice"])
    else:
        expect(pressed).to_have_count(1)
    assert len(store.labels("both")) == 2
    assert not errors, errors
    store.close()


def shown_first(page) -> str:
    return page.locator(".response-card .card-body").first.inner_text().strip()
