"""The reward-model quality benchmark's folds and moving averages (bench/rm_quality.py)."""

import json

import torch

from bench.rm_quality import MovingAverages, _split


def _rows(path):
    return [json.loads(line)["i"] for line in path.read_text().splitlines()]


def test_folds_hold_out_each_block_once_and_train_on_the_rest(tmp_path):
    run = tmp_path / "task"
    (run / "label").mkdir(parents=True)
    (run / "label" / "labels.jsonl").write_text("".join(f'{{"i": {i}}}\n' for i in range(10)))
    held = []
    for fold in range(5):
        train, validation, test = _split(run, tmp_path, 2, 0, 0, fold)
        assert validation == test
        assert sorted(_rows(train) + _rows(test)) == list(range(10))
        held += _rows(test)
    assert held == [8, 9, 6, 7, 4, 5, 2, 3, 0, 1]  # fold 0 is the last block, as without folds
    train, validation, test = _split(run, tmp_path, 2, 0, 3, fold=1)
    assert (_rows(train), _rows(validation), _rows(test)) == ([0, 1, 2, 3, 4], [5, 8, 9], [6, 7])


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
