#!/usr/bin/env bash
# The reward-model experiment of the sentiment task, step by step:
# prompts -> K=4 samples per prompt -> simulated rankings (gold = VADER, ~25% noise) -> RM.
# Usage: examples/rm_sentiment.sh [POLICY] [BACKBONE] [N_PROMPTS]
#   POLICY    model that writes the candidates: default the SFT model of
#             configs/sft_example.yaml (runs/sft-example/final); base smollm2-135m rambles off-topic, and a reward model
#             learns sentiment from its samples far worse (accuracy 0.64 against 0.71)
#   BACKBONE  reward-model backbone (default minilm-l6; smollm2-135m for the policy copy)
# Measured with the defaults on 2 cores: ~7 min sampling, ~4 min training.
set -euo pipefail
policy=${1:-runs/sft-example/final}
backbone=${2:-minilm-l6}
n=${3:-960}
if [ ! -d "$policy" ] && [ "$policy" = runs/sft-example/final ]; then
  echo "no $policy yet: train it first: tether sft --config configs/sft_example.yaml (or pass a policy, e.g. smollm2-135m)" >&2
  exit 2
fi
data=runs/rm-example-data
tether=${TETHER:-.venv/bin/tether}
mkdir -p "$data"
[ -f "$data/prompts.jsonl" ] || .venv/bin/python -m tether.tasks.sentiment prompts "$data/prompts.jsonl" --n "$n" --seed 11
[ -f "$data/candidates.jsonl" ] || $tether sample policy="$policy" prompts="$data/prompts.jsonl" \
  output="$data/candidates.jsonl" k=4 max_new_tokens=40 temperature=1.0 batch_size=16 bf16=true
[ -f "$data/labels.jsonl" ] || $tether label simulate candidates="$data/candidates.jsonl" \
  output="$data/labels.jsonl" format=rankings temperature=0.5
$tether rm --config configs/rm_example.yaml model.name="$backbone" \
  run_dir="runs/rm-example-$(basename "$backbone")"
