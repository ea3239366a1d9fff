"""Regenerate docs/label_page.png, the README's picture of the labeling page.

    .venv/bin/python docs/label_screenshot.py

A throwaway database with one project, a real `tether label serve`, Debian's chromium at
1366x768 (a laptop screen), logged in as an annotator.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from playwright.sync_api import sync_playwright

from tether.labeling.client import ServerProcess
from tether.labeling.projects import create_project
from tether.labeling.store import Store

PROMPT = [
    {"role": "system", "content": "You are a film critic who writes short, fair reviews."},
    {"role": "user", "content": "What did you think of *The Long Evening*?"},
    {"role": "assistant", "content": "Overall I liked it. Do you want the spoiler-free take?"},
    {"role": "user", "content": "Yes please, in a few lines."},
]
RESPONSES = [
    "**A quiet triumph.** The pacing is patient but never dull, and the two leads carry "
    "every scene.\n\n- sharp, funny `dialogue`\n- a score that knows when to stop\n\n"
    "Worth seeing in a cinema. More in [my full review](https://example.org/review).",
    "It was fine. Some parts were slow and I checked my phone twice. The ending made up for "
    "some of it, I guess. <script>alert('hi')</script> is shown as text, never run.",
]


def main(out: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "labels.db"
        store = Store(str(db))
        create_project(store, "film-reviews", [("demo", {"prompt": PROMPT,
                                                         "responses": RESPONSES})]
                       + [(f"demo {i}", {"prompt": f"Review film {i}.",
                                         "responses": ["Good.", "Bad."]}) for i in range(39)],
                       overlap=2)
        store.set_priorities("film-reviews", {store.items("film-reviews")[0].id: 1.0})
        token = store.add_annotator("alice")
        server = ServerProcess(db, Path(tmp) / "server.log").start()
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(
                    executable_path="/usr/bin/chromium", headless=True,
                    args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                          "--disable-component-update", "--disable-sync", "--no-first-run"])
                page = browser.new_page(viewport={"width": 1366, "height": 768})
                page.goto(server.url + "/")
                page.fill("input[name=token]", token)
                page.click("button[type=submit]")
                page.wait_for_selector(".response-card")
                page.keyboard.press("1")
                page.screenshot(path=str(out))
                browser.close()
        finally:
            server.stop()
    print(f"wrote {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).with_name("label_page.png"))
