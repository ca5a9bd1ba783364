#!/usr/bin/env bash
# Issue 12 item 7: the real-size benchmark on one GPU, with Llama-2-7B's layer shapes
# (hidden 4096, intermediate 11008, 32 heads), 4 blocks:
#   1. benchmarks/scale.py with GPTQ 4-bit g128: seconds per block, peak GPU memory, peak
#      resident memory, forwards vs solves (rows into OUTDIR);
#   2. DBF 1.5 bits (its defaults) on one 4096 x 4096 layer: the solve's seconds on the GPU;
#   3. benchmarks/scale.py with DBF 1.5 and its defaults, in the time that is left.
# Made for a machine with no network: the packages' wheels (for their entry points) and
# the assets it needs come in a folder beside the checkout.
#
#   bash benchmarks/gpu_scale.sh OUTDIR BUNDLE [SECONDS]
#
# BUNDLE holds wheels/*.whl (onecomp-core, -gptq, -dbf: `pip wheel --no-deps`) and
# assets/ (stories260K/ and text/wikitext2-valid.tokens.txt). SECONDS (default 540)
# bounds the whole script: DBF's run gets what is left after the others. A dry run on
# the CPU: SHAPE=tiny DEVICE=cpu LAYER=256 bash benchmarks/gpu_scale.sh /tmp/o .gpu
set -u
shape=${SHAPE:-llama2-7b} device=${DEVICE:-cuda} layer=${LAYER:-4096}
out=${1:?OUTDIR}
bundle=$(cd "${2:?BUNDLE}" && pwd)
budget=${3:-540}
start=$SECONDS
here=$(cd "$(dirname "$0")/.." && pwd)
models=/tmp/onecomp-scale-$shape
mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/onecomp-site "$bundle"/wheels/*.whl || exit 1
roots="$here"
for plugin in "$here"/plugins/gptq "$here"/plugins/dbf; do roots="$roots:$plugin"; done
export PYTHONPATH="$roots:/tmp/onecomp-site" ONECOMP_ASSETS="$bundle/assets" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" |
    tee -a "$out/gpu.txt"

echo "== GPTQ 4-bit g128, 4 blocks of Llama-2-7B shape"
python3 "$here/benchmarks/scale.py" --shape "$shape" --blocks 4 --methods gptq --device "$device" \
    --threads 0 --timeout 240 --label "H200: Llama-2-7B shapes, 4 blocks" \
    --models "$models" --out "$out/scale_gpu.jsonl" --keep

echo "== DBF 1.5 on one 4096x4096 layer (defaults), on the GPU"
timeout 120 python3 "$here/benchmarks/dbf_layer_speed.py" --size "$layer" --device "$device" \
    --threads 16 --label "H200, Llama-2-7B attention shape" --out "$out/dbf_layer_speed.jsonl"

left=$((budget - (SECONDS - start)))
echo "== DBF 1.5 (defaults), 4 blocks, ${left} s left"
if [ "$left" -gt 60 ]; then
    python3 "$here/benchmarks/scale.py" --shape "$shape" --blocks 4 --methods dbf --device "$device" \
        --threads 0 --timeout "$((left - 15))" --label "H200: Llama-2-7B shapes, 4 blocks" \
        --models "$models" --out "$out/scale_gpu.jsonl" --keep --progress
fi
# the engine's stderr of each run (the DBF one shows how far it got when stopped)
for logs in "$models"/runs/*.logs; do
    [ -d "$logs" ] && tail -c 6000 "$logs"/stderr.txt >"$out/$(basename "$logs").txt" 2>/dev/null
done
echo "done in $((SECONDS - start)) s"
