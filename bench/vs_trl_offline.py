"""Rows of `python -m bench vs-trl`: see bench.vs_trl."""

ROWS = []
