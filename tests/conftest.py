import json
import os
import random
from pathlib import Path

import pytest
import torch

from tether.models.tiny import tiny_llama, tiny_tokenizer

REPO = Path(__file__).resolve().parents[1]

# `make test` runs two pytest workers on two cores; more threads than cores makes torch's
# small ops spin and slows the tiny-model tests several-fold. Subprocesses inherit this.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
# On a GPU (python -m bench gpu-check runs this suite there) fp32 matmuls would otherwise run
# in TF32, ~1e-3 relative: tests that compare two runs in fp32 need fp32 on every device.
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False


@pytest.fixture(scope="session")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture
def model():
    m = tiny_llama(seed=0)
    m.eval()
    return m


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def sft_rows():
    """Demonstrations of varied length, so padding and token weighting matter."""
    subjects = ["plot", "acting", "score", "ending", "pacing", "dialogue", "camera work", "cast"]
    verdicts = ["was lovely", "was dull and slow", "felt fine", "was a wonderful surprise",
                "fell flat, sadly, and never recovered", "was great"]
    rows = []
    for i in range(48):
        verdict = " and ".join(verdicts[j % 6] for j in range(i, i + 1 + i % 3))
        rows.append({"prompt": f"Continue this movie review: the {subjects[i % 8]}",
                     "completion": f" {verdict}."})
    return rows


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)


GOOD_WORDS = ["lovely", "great", "wonderful", "warm", "funny"]
BAD_WORDS = ["dull", "bad", "boring", "flat", "weak"]


def ranking_rows(n: int, k: int = 4, seed: int = 0) -> list[dict]:
    """Rankings by the number of good words: a preference the tiny model can learn."""
    r = random.Random(seed)
    rows = []
    for i in range(n):
        goods = [r.randint(0, 3) for _ in range(k)]
        texts = [" The film was " + " ".join([r.choice(GOOD_WORDS) for _ in range(g)] +
                                             [r.choice(BAD_WORDS) for _ in range(3 - g)]) + "."
                 for g in goods]
        ranks = [sorted(goods, reverse=True).index(g) for g in goods]  # ties share a rank
        rows.append({"prompt": f"Review {i}:", "responses": texts, "ranks": ranks,
                     "gold_scores": [float(g) for g in goods]})
    return rows


# The labeling app's tests ------------------------------------------------------------------
CHROMIUM = "/usr/bin/chromium"
# Chromium's background services try to reach Google; this machine has no network for them.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def browser():
    """Debian's chromium under Playwright; `make test` (TETHER_BROWSER_TESTS=required) fails
    without it, a plain pytest skips."""
    if not Path(CHROMIUM).exists():
        if os.environ.get("TETHER_BROWSER_TESTS") == "required":
            pytest.fail(f"{CHROMIUM} is missing: `make test` installs Debian's chromium")
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def store(tmp_path):
    """A labeling database in the test's directory."""
    from tether.labeling.store import Store

    s = Store(str(tmp_path / "labels.db"))
    yield s
    s.close()


def rows(items: list[dict], name: str = "c.jsonl") -> list[tuple[str, dict]]:
    """Candidate records as the importers see them: (file:line, record)."""
    return [(f"{name}:{i + 1}", r) for i, r in enumerate(items)]


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}
