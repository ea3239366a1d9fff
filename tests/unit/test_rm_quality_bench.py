"""The reward-model quality benchmark's folds, label draws and moving averages
(bench/rm_quality.py)."""

import json

import torch
import yaml

from bench.rm_quality import MovingAverages, _label_sets, _split


def _rows(path):
    return [json.loads(line)["i"] for line in path.read_text().splitlines()]


def test_folds_hold_out_each_block_once_and_train_on_the_rest(tmp_path):
    labels = tmp_path / "labels.jsonl"
    labels.write_text("".join(f'{{"i": {i}}}\n' for i in range(10)))
    held = []
    for fold in range(5):
        train, validation, test = _split(labels, tmp_path, 2, 0, 0, fold)
        assert validation == test
        assert sorted(_rows(train) + _rows(test)) == list(range(10))
        held += _rows(test)
    assert held == [8, 9, 6, 7, 4, 5, 2, 3, 0, 1]  # fold 0 is the last block, as without folds
    train, validation, test = _split(labels, tmp_path, 2, 0, 3, fold=1)
    assert (_rows(train), _rows(validation), _rows(test)) == ([0, 1, 2, 3, 4], [5, 8, 9], [6, 7])


def test_label_draws_relabel_the_candidates_with_the_runs_labeler(tmp_path):
    run = tmp_path / "sentiment"
    (run / "sample").mkdir(parents=True)
    words = ["wonderful", "awful", "fine", "dreadful", "great", "boring"]
    (run / "sample" / "candidates.jsonl").write_text("".join(
        json.dumps({"prompt": f"p{i}", "responses": [f"{w} {i}" for w in words]}) + "\n"
        for i in range(20)))
    labeler = {"gold": "sentiment", "format": "rankings", "temperature": 0.5, "seed": 0,
               "threshold": None, "candidates": "", "output": "unused.jsonl"}
    (run / "config.yaml").write_text(yaml.safe_dump({"run_dir": str(run), "label": labeler}))
    sets = _label_sets([str(run)], "1,2", tmp_path)
    assert [(name, source) for name, _, source in sets] == [
        ("sentiment", run), ("sentiment-draw1", run), ("sentiment-draw2", run)]
    assert sets[0][1] == run / "label" / "labels.jsonl"  # the run's own labels, as they are
    draws = [[json.loads(line)["ranks"] for line in path.read_text().splitlines()]
             for _, path, _ in sets[1:]]
    assert all(len(d) == 20 and all(sorted(r) == list(range(6)) for r in d) for d in draws)
    assert draws[0] != draws[1]  # another seed, another draw


def test_moving_average_by_hand():
    model = torch.nn.Linear(1, 1, bias=False)
    frozen = torch.nn.Linear(1, 1)
    frozen.requires_grad_(False)
    net = torch.nn.Sequential(model, frozen)
    averages = MovingAverages([0.5, 0.0])
    with torch.no_grad():
        model.weight.fill_(1.0)
    averages.started(net)
    for step, value in enumerate((3.0, 5.0), 1):
        with torch.no_grad():
            model.weight.fill_(value)
        averages.stepped(step, {})
    # 0.5: 1 -> 0.5 * 1 + 0.5 * 3 = 2 -> 0.5 * 2 + 0.5 * 5 = 3.5; 0.0: the last weights
    assert set(averages.averages[0]) == {"0.weight"}  # trainable weights only
    averages.load(net, 0)
    assert model.weight.item() == 3.5
    averages.load(net, 1)
    assert model.weight.item() == 5.0
