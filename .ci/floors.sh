#!/usr/bin/env bash
# The declared minimums are true: install onecomp-core and the GPTQ plugin with transformers,
# accelerate and datasets pinned to the floors pyproject.toml declares (torch 2.13.0 CPU), in a
# venv of their own, then quantize stories260K (RTN, and GPTQ on calibration text), load it
# back and measure its perplexity. About 3 minutes, most of it pip.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
venv=${ONECOMP_FLOORS_VENV:-.ci/.venv-floors}
assets=${ONECOMP_ASSETS:-../shared/assets}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
start=$SECONDS

"$python" - > "$work/floors.txt" <<'PY'
import re
import tomllib

with open("pyproject.toml", "rb") as f:
    dependencies = tomllib.load(f)["project"]["dependencies"]
for dependency in dependencies:
    found = re.fullmatch(r"(transformers|accelerate|datasets)>=([\w.]+)", dependency)
    if found:
        print(f"{found[1]}=={found[2]}")
PY
echo "floors: $(tr '\n' ' ' < "$work/floors.txt")"

"$python" -m venv --clear "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet "torch==2.13.0"
"$venv/bin/python" -m pip install --quiet -c "$work/floors.txt" -e . -e plugins/gptq
"$venv/bin/python" -m pip list 2>/dev/null | grep -iE "^(transformers|accelerate|datasets) "

onecomp="$venv/bin/onecomp"
text="$assets/text/wikitext2-valid.tokens.txt"
"$onecomp" quantize "$assets/stories260K" --method rtn --quiet --out "$work/rtn"
"$onecomp" quantize "$assets/stories260K" --method gptq --set wbits=4 --set groupsize=32 \
  --calibration "$text" --num-samples 8 --max-length 64 --quiet --out "$work/gptq"
"$onecomp" eval "$work/gptq" --ppl "$assets/text/tinystories-valid-excerpt.txt" --max-tokens 4096
"$venv/bin/python" - "$work" <<'PY'
import sys

import torch
from onecomp_core import load_quantized_model

for name in ("rtn", "gptq"):
    model, tokenizer = load_quantized_model(f"{sys.argv[1]}/{name}")
    ids = tokenizer("Once upon a time", return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    assert torch.isfinite(logits).all(), name
    print(f"{name}: loaded, logits {tuple(logits.shape)}")
PY
echo "floors job: $((SECONDS - start)) s"
