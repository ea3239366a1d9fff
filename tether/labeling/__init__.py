"""Preference labels: the simulated labeler (`simulate`), and the human labeling app.

`tether label simulate` turns candidates (K responses per prompt, from `tether sample`) into
noisy preferences drawn from a gold scorer, so a reward model can be trained on comparisons
alone, as with people, while the hidden truth stays known for evaluation.

`commands` holds the `tether label ...` commands (a config in, what happened printed out); the
other modules are the library they call: `simulate`, `store` (the database), `projects`
(creating one, its statistics), `export` (labels -> preference rows), `agreement`, `active`
(active sampling), `server` (the web app), `collect` (the pipeline's human-label stage) and
`client` (a Python client of the app's API, and a load generator).
"""
