#!/usr/bin/env bash
# DPO on the sentiment task, step by step, then the evaluation that shows what it bought:
# prompts -> K=4 samples from the SFT model -> simulated rankings (gold = VADER, ~25% noise)
# -> DPO at two betas -> gold score and KL to the SFT model on held-out prompts.
# Usage: examples/dpo_sentiment.sh [BETA ...]      (default: 0.1 0.5)
# Needs the SFT model of configs/sft_example.yaml (runs/sft-example/final). Shares its data
# directory with examples/rm_sentiment.sh, so the candidates and labels are made once for both.
# Measured on 2 cores: ~7 min sampling, per beta ~4 min reference log-probs (the first
# run; later ones reuse the cache) and ~10 min of DPO, ~2 min evaluating each policy.
set -euo pipefail
betas=("$@")
[ ${#betas[@]} -gt 0 ] || betas=(0.1 0.5)
sft=runs/sft-example/final
if [ ! -d "$sft" ]; then
  echo "no $sft yet: train it first: tether sft --config configs/sft_example.yaml" >&2
  exit 2
fi
data=runs/rm-example-data
out=runs/dpo-example
tether=${TETHER:-.venv/bin/tether}
python=${PYTHON:-.venv/bin/python}
mkdir -p "$data" "$out"
[ -f "$data/prompts.jsonl" ] || $python -m tether.tasks.sentiment prompts "$data/prompts.jsonl" --n 960 --seed 11
[ -f "$data/candidates.jsonl" ] || $tether sample policy="$sft" prompts="$data/prompts.jsonl" \
  output="$data/candidates.jsonl" k=4 max_new_tokens=40 temperature=1.0 batch_size=16 bf16=true
[ -f "$data/labels.jsonl" ] || $tether label simulate candidates="$data/candidates.jsonl" \
  output="$data/labels.jsonl" format=rankings temperature=0.5
[ -f "$out/heldout_prompts.jsonl" ] || $python -m tether.tasks.sentiment prompts \
  "$out/heldout_prompts.jsonl" --n 200 --seed 4242 --exclude "$data/prompts.jsonl"

policies=$sft
for beta in "${betas[@]}"; do
  run="$out/beta$beta"
  # Every beta has the same reference and data: reuse the reference log-probs of the first.
  if [ ! -f "$run/ref_logprobs.pt" ] && [ -f "$out/beta${betas[0]}/ref_logprobs.pt" ]; then
    mkdir -p "$run" && cp "$out/beta${betas[0]}/ref_logprobs.pt" "$run/"
  fi
  [ -f "$run/final/config.json" ] || $tether dpo --config configs/dpo_example.yaml \
    run_dir="$run" dpo.beta="$beta" resume=true
  policies="$policies,$run/final"
done
$tether eval policies="$policies" reference="$sft" prompts="$out/heldout_prompts.jsonl" gold=sentiment \
  n=2 max_new_tokens=40 batch_size=16 bf16=true output="$out/eval.json"
