#!/usr/bin/env bash
# The real consumer of onecomp's GPTQ outputs: transformers + optimum + gptqmodel, pinned to
# versions that work with torch 2.13, in a venv of their own (gptqmodel pins numpy 2.2.6) and
# without onecomp. The cases are written with this python (onecomp installed), then loaded
# there (tests/compat/check_gptqmodel.py says what is compared). About 3 minutes to install
# (gptqmodel 7.6.0 is a pure-Python sdist: its CUDA kernels build just in time, never here)
# and 3 minutes to run on 2 CPU cores. The venv is kept for the next run (remove it to renew).
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
venv=${ONECOMP_COMPAT_VENV:-.ci/.venv-gptqmodel}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
start=$SECONDS

if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import gptqmodel, optimum" 2>/dev/null; then
  "$python" -m venv --clear "$venv"
  "$venv/bin/python" -m pip install --quiet --upgrade pip
  # the CPU build of torch first, as in .ci/run
  "$venv/bin/python" -m pip install --quiet "torch==2.13.0"
  "$venv/bin/python" -m pip install --quiet \
    "gptqmodel==7.6.0" "optimum==2.3.0" "transformers==5.24.0"
fi
echo "gptqmodel venv ready after $((SECONDS - start)) s"

"$python" tests/compat/make_gptq_cases.py "$work"
"$venv/bin/python" tests/compat/check_gptqmodel.py "$work"
echo "gptqmodel compatibility job: $((SECONDS - start)) s"
