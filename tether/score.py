"""`tether score`: reward-model scores for (prompt, response) rows, batched."""

from __future__ import annotations

import json
import time
from pathlib import Path

from tqdm.auto import tqdm

from tether.config import ScoreConfig
from tether.data.order import chunks
from tether.data.preferences import parse_responses
from tether.data.readers import BadRow, read_rows
from tether.device import pick_device
from tether.errors import DataError
from tether.files import atomic_write_text, check_output
from tether.models.reward import RewardModel


def run(cfg: ScoreConfig) -> Path:
    check_output(cfg.output)
    rm = RewardModel.from_pretrained(cfg.reward_model).to(pick_device(cfg.device))
    rows, items = [], []  # items: (row index, prompt, response)
    for row in read_rows(cfg.input):
        try:
            if isinstance(row.record, BadRow):
                raise row.record
            prompt, responses = parse_responses(row.record, row.where)
        except BadRow as e:
            raise DataError(str(e)) from None
        items += [(len(rows), prompt, r) for r in responses]
        rows.append(row.record)
    if not items:
        raise DataError(f"{cfg.input}: nothing to score")

    started = time.perf_counter()
    scores: list[float] = []
    with tqdm(total=len(items), desc="score", unit="response", dynamic_ncols=True) as progress:
        for part in chunks(items, cfg.batch_size):
            scores += rm.score([p for _, p, _ in part], [r for _, _, r in part],
                               batch_size=cfg.batch_size, bf16=cfg.bf16)
            progress.update(len(part))

    per_row: list[list[float]] = [[] for _ in rows]
    for (index, _, _), score in zip(items, scores, strict=True):
        per_row[index].append(score)
    out_lines = []
    for record, row_scores in zip(rows, per_row, strict=True):
        key = "score" if "response" in record else "scores"
        out_lines.append(json.dumps({**record, key: row_scores[0] if key == "score"
                                     else row_scores}))
    output = Path(cfg.output)
    atomic_write_text(output, "\n".join(out_lines) + "\n")
    elapsed = time.perf_counter() - started
    mean = sum(scores) / len(scores)
    print(f"scored {len(scores)} responses of {len(rows)} rows in {elapsed:.1f} s "
          f"(mean reward {mean:.3f}) -> {output}")
    return output
