#!/usr/bin/env bash
# The GPU check, as one prepared script for a GPU host that has PyTorch with CUDA but no
# onnxruntime-gpu (bench/gpu.md has its results and the reasons):
#   1. the trained tiny student in FP16 on the GPU under PyTorch: parity against FP32 on the
#      CPU by export's own FP16 checks, and the decode loop with the cache on the device
#      (`python -m export torch-gpu-check`);
#   2. training tokens/s on the GPU (bf16 autocast) of the default student from scratch and of
#      a pretrained-size student: SmolLM2-135M's architecture with random weights (the GGUF
#      does not fit in what a run may carry; speed does not depend on the weights' values),
#      each through `python -m training train`, the same command as on the CPU.
#
#   CHECKPOINT=DIR DATA=scored.jsonl PRETRAINED=DIR OUT=DIR bench/gpu.sh
#
# PRETRAINED: a folder with SmolLM2's config.json and tokenizer files (artifacts/.../init_hf).
# Every result lands in $OUT; one failing part does not stop the others (exit 1 at the end).
set -uo pipefail
: "${CHECKPOINT:?a trained tiny checkpoint}" "${DATA:?scored records}" "${PRETRAINED:?SmolLM2 config folder}"
OUT=${OUT:-artifacts/gpu}
PY=${PY:-python3}
WORK=${WORK:-/tmp/gpu_work}
TINY_STEPS=${TINY_STEPS:-400}  # step budgets of the timed training runs (smaller for a CPU dry run)
PRETRAINED_STEPS=${PRETRAINED_STEPS:-60}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
mkdir -p "$OUT" "$WORK"
status=0
part() {  # part NAME COMMAND...: run it, log it, remember a failure
    local name=$1
    shift
    echo "== $name: $*" | tee -a "$OUT/gpu.log"
    local start=$SECONDS
    "$@" >>"$OUT/gpu.log" 2>&1 || { echo "!! $name failed (exit $?)" | tee -a "$OUT/gpu.log"; status=1; }
    echo "== $name: $((SECONDS - start)) s" | tee -a "$OUT/gpu.log"
}

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader >"$OUT/gpu.log" 2>&1
part fp16-check "$PY" -m export torch-gpu-check --checkpoint "$CHECKPOINT" --out "$OUT/torch_gpu_check.md"

train() {  # train NAME STEPS BATCH [ARGS...]
    local name=$1 steps=$2 batch=$3
    shift 3
    part "train-$name" "$PY" -m training train --data "$DATA" --out "$WORK/$name" --max-minutes 0 \
        --max-steps "$steps" --batch-size "$batch" --save-every 100000 "$@"
    cp "$WORK/$name/train_log.jsonl" "$OUT/train_$name.jsonl" 2>/dev/null
}
train tiny-b32 "$TINY_STEPS" 32
train tiny-b256 "$((TINY_STEPS / 2))" 256

"$PY" - "$PRETRAINED" "$WORK/smollm2_random" <<'EOF' >>"$OUT/gpu.log" 2>&1 || status=1
import shutil, sys
from pathlib import Path
from transformers import AutoConfig, AutoModelForCausalLM
source, target = Path(sys.argv[1]), Path(sys.argv[2])
model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(source))
model.save_pretrained(target)
for name in ("tokenizer.json", "tokenizer_config.json"):
    shutil.copy(source / name, target / name)
print(f"random-weight {model.config.model_type}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M -> {target}")
EOF
train smollm2-b16 "$PRETRAINED_STEPS" 16 --init "$WORK/smollm2_random" --lr 1e-4 --warmup-steps 20
train smollm2-b64 "$((PRETRAINED_STEPS * 2 / 3))" 64 --init "$WORK/smollm2_random" --lr 1e-4 --warmup-steps 20
exit $status
