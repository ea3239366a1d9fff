"""Active sampling: serve first the items whose comparison a reward model is least sure of.

With one reward model, an item's priority is minus the smallest margin |r_a - r_b| between any
two of its responses: a near tie is where a human label moves the model most. With an ensemble
(several reward models), it is the largest disagreement: the standard deviation across models
of a pair's margin r_a - r_b, maximised over the item's pairs. Rewards are compared as the
models output them; a pipeline's reward models share a scale (normalised on SFT samples).
Only comparisons are ordered: a response to rate alone has no margin, and keeps priority 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tether.labeling.store import Project, Store


def priority(scores: np.ndarray) -> float:
    """scores: [models, K] rewards of one item's K responses. Higher is served first."""
    scores = np.asarray(scores, dtype=float)
    if scores.ndim != 2 or scores.shape[1] < 2:
        raise ValueError(f"scores must be [models, K >= 2], got shape {scores.shape}")
    i, j = np.triu_indices(scores.shape[1], k=1)
    margins = scores[:, i] - scores[:, j]  # [models, pairs]
    if scores.shape[0] == 1:
        return float(-np.abs(margins[0]).min())
    return float(margins.std(axis=0).max())


def prioritize(store: Store, project: Project, reward_models: Sequence[str],
               batch_size: int = 16) -> dict[int, float]:
    """Score every non-gold item's responses with each reward model and store priorities."""
    from tether.data.records import parse_prompt
    from tether.device import pick_device
    from tether.models.reward import RewardModel

    everything = [i for i in store.items(project.name) if i.gold is None]
    items = [i for i in everything if len(i.responses) > 1]
    prompts, responses = [], []
    for item in items:
        messages = parse_prompt({"prompt": item.prompt}, item.source)
        prompts += [messages] * len(item.responses)
        responses += item.responses
    per_model = []
    for path in reward_models:
        rm = RewardModel.from_pretrained(path).to(pick_device("auto"))
        per_model.append(rm.score(prompts, responses, batch_size=batch_size))
        del rm
    priorities, start = {}, 0
    for item in items:
        k = len(item.responses)
        scores = np.array([s[start:start + k] for s in per_model])
        priorities[item.id] = priority(scores)
        start += k
    store.set_priorities(project.name, priorities)
    kind = "smallest margin" if len(reward_models) == 1 else "largest ensemble disagreement"
    print(f"active sampling: {len(items)} items ordered by {kind} "
          f"({len(reward_models)} reward model{'s' if len(reward_models) > 1 else ''})"
          + (f"; {len(everything) - len(items)} responses to rate left unordered"
             if len(everything) > len(items) else ""))
    return priorities
