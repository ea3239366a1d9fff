"""Preference labels: the simulated labeler (`simulate`), and the human labeling app.

`tether label simulate` turns candidates (K responses per prompt, from `tether sample`) into
noisy preferences drawn from a gold scorer, so a reward model can be trained on comparisons
alone, as with people, while the hidden truth stays known for evaluation.
"""
