#!/usr/bin/env bash
# SmolLM2 25% quality shards at one code version (HEAD of /work/sm6/code), resumed from 134ac75's journals.
set -u
cd /work/sm6/code
export HF_HUB_OFFLINE=1 PYTHONPATH=/work/sm6/code TOKENIZERS_PARALLELISM=false
PY=/work/main/.venv/bin/python
C="--family smollm2 --remove 0.25 --trials 60 --max-examples 64 --validation-examples 128 --calibration-texts 8 --anytime-points 1 --threads 1 --runs-dir /work/sm6/runs --resume"
case "$1" in
A) exec $PY benchmarks/quality.py $C --rows gptailor gptailor+repair --json /work/sm6/A.json ;;
B) exec $PY benchmarks/quality.py $C --rows shortgpt greedy-ppl gptailor-seeds-only shortgpt+repair greedy-ppl+repair --json /work/sm6/B.json ;;
esac
