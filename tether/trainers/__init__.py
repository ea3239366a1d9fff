"""One training loop per algorithm, each a `train(cfg)` readable top to bottom."""
