#!/usr/bin/env bash
# GPU check on a lent machine: installs the carried wheels, then runs benchmarks/gpu_check.py
# (gptailor_merge.bench.gpu_check: a 7B-shaped family in GPU memory, search, replay, mergekit).
#
#   bash benchmarks/gpu_check.sh                        # on one CUDA GPU (H200: ~70 GB of it)
#   GPU_CHECK_SHAPE=tiny bash benchmarks/gpu_check.sh   # the same code path on CPU, in a minute
#
# Needs torch + transformers (>= 5) preinstalled; the rest travels as wheels in $WHEELS (default
# .whl), see benchmarks/README.md. Knobs: GPU_CHECK_SHAPE (7b|tiny), GPU_CHECK_DTYPE, GPU_CHECK_TRIALS
# (20), GPU_CHECK_DEADLINE_S (430: later stages are skipped, with a message, past it),
# GPU_CHECK_DISK_CANDIDATES (2: candidates written to disk for mergekit), GPU_CHECK_TMP (scratch
# folder, needs ~55 GB free for 7b), GPU_CHECK_JSON (where to write the summary; default $OUT).
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-python3}"
WHEELS="${WHEELS:-.whl}"
if compgen -G "$WHEELS/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/gptailor-site "$WHEELS"/*.whl
  export PYTHONPATH="$PYTHONPATH:/tmp/gptailor-site"
fi
if ! "$PY" -c "import torch, transformers, mergekit, nevergrad, pydantic, immutables, yaml, tqdm" 2>/tmp/gpu_check_import.err; then
  echo "gpu_check: missing Python packages:" >&2
  tail -n 1 /tmp/gpu_check_import.err >&2
  echo "carry wheels in $WHEELS (benchmarks/README.md, 'GPU check'): mergekit nevergrad cma" \
       "bayesian-optimization directsearch pydantic pydantic-core annotated-types" \
       "typing-inspection immutables" >&2
  exit 2
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader || true

exec timeout "${GPU_CHECK_TIMEOUT_S:-470}" "$PY" benchmarks/gpu_check.py "$@"
