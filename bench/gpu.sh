#!/usr/bin/env bash
# One prepared GPU check: every GPU figure of the workbench in one go, under 8 minutes on one
# H100 / H200, with every figure and log written under OUTDIR (README: "One prepared GPU check").
#
#   bench/gpu.sh --prepare [DIR]      here, with pip's network: DIR (default .gpu/) gets the wheels the
#                                     GPU machine lacks (bitsandbytes, pydantic, rouge_score, nltk) and
#                                     the embedded model's tokenizer; carry DIR to the GPU machine
#   bench/gpu.sh OUTDIR               there: install the carried wheels, then
#                                       1. save a random Llama-2-7B shape once (bf16) on local disk
#                                       2. bench/inspect_speed.py on it in NF4: 512 tokens, baseline +
#                                          expert + generic vs one plain forward and the naive two passes
#                                       3. bench/train_speed.py in NF4: QLoRA unlearn step 8 x 512 with
#                                          gradient checkpointing for every registered method, peak
#                                          memory, 120-step estimate, generic labels vs the forward ceiling
#                                       4. pytest -m gpu
#                                       5. OUTDIR/summary.md: each figure, its reference, its target
#   bench/gpu.sh OUTDIR --dry-run     the same steps on the CPU with a tiny model (tests/test_quantized.py)
#
# OUTDIR holds gpu.log (everything printed), steps.txt, inspect.json, train.json, pytest.log,
# summary.md and summary.json. OBLIVIATE_GPU_DIR (default .gpu/) is where the carried files are;
# OBLIVIATE_GPU_WORK (default /tmp/obliviate-gpu) holds the 13.5 GB model, kept for a rerun.
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PYTHON:-python3}
GPU_DIR=${OBLIVIATE_GPU_DIR:-$ROOT/.gpu}

if [[ "${1:-}" == --prepare ]]; then
  DIR=${2:-$GPU_DIR}
  mkdir -p "$DIR/wheels" || exit 2
  # The GPU machine: Python 3.12, x86-64, no network. Versions as in requirements.txt.
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform any -d "$DIR/wheels" \
    bitsandbytes==0.50.2 pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 \
    typing-inspection==0.4.5 typing_extensions==4.16.0 nltk==3.10.4 || exit 1
  "$PY" -m pip wheel -q --no-deps -w "$DIR/wheels" rouge_score==0.1.2 || exit 1  # an sdist: built here, pure Python
  PYTHONPATH=$ROOT "$PY" -c "import sys; from transformers import AutoTokenizer; from engine.models import embedded_path
AutoTokenizer.from_pretrained(embedded_path()).save_pretrained(sys.argv[1])" "$DIR/tokenizer" || exit 1
  du -sh "$DIR"
  exit 0
fi

OUT=${1:?usage: bench/gpu.sh OUTDIR [--dry-run] | bench/gpu.sh --prepare [DIR]}
DRY=0
[[ "${2:-}" == --dry-run ]] && DRY=1
mkdir -p "$OUT" || exit 2
OUT=$(cd "$OUT" && pwd)
if [[ $DRY == 1 ]]; then
  WORK=$(mktemp -d)
  trap 'rm -rf "$WORK"' EXIT
else
  WORK=${OBLIVIATE_GPU_WORK:-/tmp/obliviate-gpu}
fi
mkdir -p "$WORK"
: > "$OUT/steps.txt"
exec > >(tee "$OUT/gpu.log") 2>&1
cd "$ROOT" || exit 2

export PYTHONPATH=$ROOT PYTHONUNBUFFERED=1 OBLIVIATE_HOME=$WORK/home TOKENIZERS_PARALLELISM=false
if [[ $DRY == 0 ]] && compgen -G "$GPU_DIR/wheels/*.whl" > /dev/null; then
  echo "== installing the carried wheels: $(cd "$GPU_DIR/wheels" && ls | tr '\n' ' ')"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$WORK/site" \
    "$GPU_DIR"/wheels/*.whl || { echo "wheel install failed"; exit 1; }
  export PYTHONPATH=$WORK/site:$ROOT
fi
TOKENIZER=()
if [[ -f "$GPU_DIR/tokenizer/tokenizer.json" ]]; then
  export OBLIVIATE_TOKENIZER=$GPU_DIR/tokenizer
  TOKENIZER=(--tokenizer "$GPU_DIR/tokenizer")
fi

FAILED=0
step() {  # step NAME SECONDS COMMAND...: run with a time limit, log its rc and seconds in steps.txt
  local name=$1 limit=$2 t0=$SECONDS rc
  shift 2
  echo "== $name (limit ${limit} s): $*"
  timeout --kill-after=10 "$limit" "$@"
  rc=$?
  echo "$name rc=$rc seconds=$((SECONDS - t0))" | tee -a "$OUT/steps.txt"
  [[ $rc == 0 ]] || FAILED=1
}

echo "== bench/gpu.sh $(date -u +%FT%TZ) dry-run=$DRY work=$WORK"
"$PY" - <<'EOF'
import importlib.metadata as md, platform, torch
print("python", platform.python_version(), "| torch", torch.__version__, "| cuda", torch.version.cuda)
for m in ("transformers", "peft", "accelerate", "bitsandbytes", "safetensors", "pydantic", "rouge_score"):
    try:
        print(m, md.version(m))
    except md.PackageNotFoundError:  # the steps below fail with the details
        print(m, "MISSING")
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"GPU {p.name}, {p.total_memory / 2**30:.0f} GiB, {p.multi_processor_count} SMs")
EOF

if [[ $DRY == 1 ]]; then
  MODEL=$WORK/tiny
  step model 120 "$PY" bench/gpu_check.py model "$MODEL" --dry-run "${TOKENIZER[@]}"
  step inspect 180 "$PY" bench/inspect_speed.py --model "$MODEL" --precision nf4 --device cpu --tokens 32 \
    --repeat 1 --json "$OUT/inspect.json"
  step train 180 "$PY" bench/train_speed.py --model "$MODEL" --precision nf4 --device cpu --block 32 --batch 2 \
    --steps 1 --label-blocks 2 --group 2 --gradient-checkpointing --methods all --json "$OUT/train.json"
else
  MODEL=$WORK/llama7b
  step model 120 "$PY" bench/gpu_check.py model "$MODEL" "${TOKENIZER[@]}"
  step inspect 100 "$PY" bench/inspect_speed.py --model "$MODEL" --precision nf4 --device cuda --tokens 512 \
    --repeat 5 --json "$OUT/inspect.json"
  step train 150 "$PY" bench/train_speed.py --model "$MODEL" --precision nf4 --device cuda --block 512 --batch 8 \
    --steps 3 --label-blocks 32 --group 4 --gradient-checkpointing --methods all --json "$OUT/train.json"
fi
GPU_TESTS=$(grep -l "mark.gpu" tests/test_*.py | tr '\n' ' ')
# shellcheck disable=SC2086 # one word per test file
step pytest 80 bash -c "set -o pipefail; '$PY' -m pytest -q -m gpu -p no:cacheprovider -rs $GPU_TESTS 2>&1 | tee '$OUT/pytest.log'"
step summary 30 "$PY" bench/gpu_check.py summary "$OUT"
echo "== done in $SECONDS s; failed steps: $(grep -vc 'rc=0 ' "$OUT/steps.txt")"
exit $FAILED
