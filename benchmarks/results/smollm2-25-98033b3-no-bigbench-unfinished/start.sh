#!/usr/bin/env bash
# SmolLM2 25% (family built --without-bigbench: BIG-bench 1.0.0 is gone from PyPI) at the worktree's HEAD.
set -u
cd /work/d7/code
export HF_HUB_OFFLINE=1 PYTHONPATH=/work/d7/code TOKENIZERS_PARALLELISM=false GPTAILOR_CACHE=/root/.cache/gptailor_v5
PY=/work/main/.venv/bin/python
C="--family smollm2 --remove 0.25 --trials 60 --max-examples 64 --validation-examples 128 --calibration-texts 8 --anytime-points 1 --threads 1 --runs-dir /work/d7/sm-runs --resume"
case "$1" in
A) exec $PY benchmarks/quality.py $C --rows gptailor gptailor+repair gptailor-repair-pick --json /work/d7/sm-A.json ;;
B) exec $PY benchmarks/quality.py $C --rows shortgpt greedy-ppl gptailor-seeds-only shortgpt+repair greedy-ppl+repair --json /work/d7/sm-B.json ;;
esac
