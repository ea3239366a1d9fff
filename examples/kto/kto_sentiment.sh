#!/usr/bin/env bash
# KTO on the sentiment task, from thumbs instead of rankings, on the same candidates as
# examples/dpo_sentiment.sh: K=4 samples of the SFT model -> a simulated thumb on each
# (P(up) = sigmoid((gold - median gold) / 0.5)) -> KTO -> gold score and KL to the SFT model on
# held-out prompts, beside DPO's policy if examples/dpo_sentiment.sh has made one.
# Usage: examples/kto/kto_sentiment.sh [BETA]      (default: 0.1)
# Needs the SFT model of configs/sft_example.yaml (runs/sft-example/final).
set -euo pipefail
beta=${1:-0.1}
sft=runs/sft-example/final
if [ ! -d "$sft" ]; then
  echo "no $sft yet: train it first: tether sft --config configs/sft_example.yaml" >&2
  exit 2
fi
data=runs/rm-example-data   # shared with examples/rm_sentiment.sh and dpo_sentiment.sh
out=runs/kto-example
tether=${TETHER:-.venv/bin/tether}
python=${PYTHON:-.venv/bin/python}
mkdir -p "$data" "$out"
[ -f "$data/prompts.jsonl" ] || $python -m tether.tasks.sentiment prompts "$data/prompts.jsonl" --n 960 --seed 11
[ -f "$data/candidates.jsonl" ] || $tether sample policy="$sft" prompts="$data/prompts.jsonl" \
  output="$data/candidates.jsonl" k=4 max_new_tokens=40 temperature=1.0 batch_size=16 bf16=true
[ -f "$data/thumbs.jsonl" ] || $tether label simulate candidates="$data/candidates.jsonl" \
  output="$data/thumbs.jsonl" format=thumbs temperature=0.5
[ -f "$out/heldout_prompts.jsonl" ] || $python -m tether.tasks.sentiment prompts \
  "$out/heldout_prompts.jsonl" --n 200 --seed 4242 --exclude "$data/prompts.jsonl"

run="$out/beta$beta"
[ -f "$run/final/config.json" ] || $tether kto --config configs/kto_example.yaml \
  model.name="$sft" data.train="$data/thumbs.jsonl" data.eval_fraction=0.05 \
  optim.lr=2e-5 train.epochs=1 train.eval_every=40 train.save_every=40 train.bf16=true \
  run_dir="$run" kto.beta="$beta" resume=true
policies="$sft,$run/final"
[ -d runs/dpo-example/beta0.1/final ] && policies="$policies,runs/dpo-example/beta0.1/final"
$tether eval policies="$policies" reference="$sft" prompts="$out/heldout_prompts.jsonl" \
  n=2 max_new_tokens=40 batch_size=16 bf16=true output="$out/eval.json"
