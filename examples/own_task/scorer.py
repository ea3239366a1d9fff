"""The gold scorer of the example task: people here prefer answers of about ten words.

A gold scorer is any function taking a list of response texts and returning one float per
text, higher meaning better. `tether run` imports it by the name given as task.gold
('scorer:brevity': scorer.py beside the pipeline file).
"""


def brevity(texts: list[str]) -> list[float]:
    """1 for exactly ten words, falling by 0.1 per word more or fewer, at least -1."""
    return [max(1.0 - abs(len(t.split()) - 10) / 10, -1.0) for t in texts]
