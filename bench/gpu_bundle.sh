#!/usr/bin/env bash
# Prepare .gpu/ for a GPU machine that has torch (CUDA) but neither a network nor tether's
# newer dependencies: py3.12 manylinux wheels of what tether needs at this venv's versions, and
# SmolLM2's tokenizer (the random:smollm2-* models need only that; no weights travel).
#
#   bash bench/gpu_bundle.sh            # here, once (about 35 MB)
#
# then, on the GPU machine, from the repository root with .gpu/ copied beside the checkout:
#
#   python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpu/*.whl
#   export PYTHONPATH=/tmp/site:$PWD TETHER_CACHE=$PWD/.gpu/cache USE_HUB_KERNELS=0
#   python3 -m bench gpu-check --parts 1,3,5     # unit tests on the GPU, training, TRL
#
# (USE_HUB_KERNELS=0 is for TRL's side: tether never asks for Hub kernels.)
#
#   bash bench/gpu_bundle.sh qlora      # bitsandbytes alone in .gpu-bnb/ (43 MB): too big to
#                                       # travel with .gpu/, so carried in a call of its own
#                                       # (installed the same way; then python3 -m bench qlora)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
if [ "${1:-}" = qlora ]; then
  grep -qxF "/.gpu-bnb/" .git/info/exclude 2>/dev/null || echo "/.gpu-bnb/" >> .git/info/exclude
  version=$("$PY" -m pip show bitsandbytes | awk '/^Version:/ {print $2}')
  "$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
    --platform manylinux_2_24_x86_64 --platform manylinux2014_x86_64 -d .gpu-bnb \
    "bitsandbytes==$version"
  du -sh .gpu-bnb
  exit 0
fi
OUT=.gpu
mkdir -p "$OUT/cache/tokenizers"
grep -qxF "/$OUT/" .git/info/exclude 2>/dev/null || echo "/$OUT/" >> .git/info/exclude

packages="transformers huggingface_hub httpx2 httpcore2 truststore idna anyio kernels tomlkit
click regex tokenizers gguf vaderSentiment peft accelerate typer safetensors SQLAlchemy trl
hf-xet shellingham rich markdown-it-py mdurl certifi h11 datasets"
pins=()
for name in $packages; do
  version=$("$PY" -m pip show "$name" 2>/dev/null | awk '/^Version:/ {print $2}')
  [ -n "$version" ] && pins+=("$name==$version")
done
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform any -d "$OUT" "${pins[@]}"

# The tokenizer alone, as tether caches it for random:smollm2-* models.
TETHER_CACHE="$PWD/$OUT/cache" "$PY" -c \
  "from tether.models.loading import load_tokenizer; load_tokenizer('random:smollm2-135m')"
du -sh "$OUT"
