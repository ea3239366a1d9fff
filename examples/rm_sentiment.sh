#!/usr/bin/env bash
# The reward-model experiment of the sentiment task, step by step:
# prompts -> K=4 samples per prompt -> simulated rankings (gold = VADER, ~25% noise) -> RM.
# Usage: examples/rm_sentiment.sh [POLICY] [BACKBONE] [N_PROMPTS]
#   POLICY    model that writes the candidates (default smollm2-135m; an SFT run's final/ works)
#   BACKBONE  reward-model backbone (default smollm2-135m; minilm-l6 for the encoder)
set -euo pipefail
policy=${1:-smollm2-135m}
backbone=${2:-smollm2-135m}
n=${3:-240}
data=runs/rm-example-data
tether=${TETHER:-.venv/bin/tether}
mkdir -p "$data"
[ -f "$data/prompts.jsonl" ] || .venv/bin/python -m tether.tasks.sentiment prompts "$data/prompts.jsonl" --n "$n" --seed 7
[ -f "$data/candidates.jsonl" ] || $tether sample policy="$policy" prompts="$data/prompts.jsonl" \
  output="$data/candidates.jsonl" k=4 max_new_tokens=40 temperature=1.0 batch_size=8 bf16=true
[ -f "$data/labels.jsonl" ] || $tether label simulate candidates="$data/candidates.jsonl" \
  output="$data/labels.jsonl" format=rankings temperature=0.5
$tether rm --config configs/rm_example.yaml model.name="$backbone" \
  run_dir="runs/rm-example-$(basename "$backbone")"
