#!/usr/bin/env bash
# What only a GPU build of vLLM 0.32 can show about the MedITok plugin (issue 14.2). Not run yet: no GPU was lent.
#
# Needs a venv with the CUDA build and the packages (the device machines have no internet: prepare it beforehand):
#   python3 -m venv .venv-vllm-cuda && .venv-vllm-cuda/bin/pip install ./packages/tokenizer "./packages/data[samples]" \
#       "./packages/ar_model[vllm-cuda]" torchxrayvision pytest
# Run from the repository root:  PYTHON=.venv-vllm-cuda/bin/python packages/ar_model/gpu_check.sh [--quick]
#
# 1. gpu_check.py (about 2 min): on Model Runner V2, the GPU build's default for Llama/Qwen2 when Triton is present,
#    a plain Llama still serves with meditok-ar installed (V2 used to refuse the plugin's V1 processors); a MedITok-AR
#    folder gets the V1 runner and the async paired scheduler (the CPU build is synchronous: never tested there);
#    a sampled CFG pair stays in lockstep and reproduces under async scheduling; VLLM_USE_V2_MODEL_RUNNER=1 is refused.
# 2. unless --quick: the whole vLLM test suite on the GPU (about 5 min): every server test through `vllm serve` on
#    the CUDA build (its real `vllm` distribution: the CPU console-script alias stays idle), V1 runner chosen by the
#    plugin, async scheduling, CUDA attention and sampler (greedy outputs must still equal the transformers path's).
set -euo pipefail
PYTHON=${PYTHON:-python}
HERE=$(cd "$(dirname "$0")" && pwd)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
export VLLM_NO_USAGE_STATS=1 VLLM_DO_NOT_TRACK=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

"$PYTHON" -c 'import torch, vllm; from vllm.platforms import current_platform as p; from vllm.triton_utils import HAS_TRITON
print("vllm", vllm.__version__, "torch", torch.__version__, "platform", p.device_name, "triton", HAS_TRITON,
      "gpu", torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)'
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

"$PYTHON" "$HERE/gpu_check.py" build "$WORK" > "$WORK/build.log" 2>&1 || { tail -40 "$WORK/build.log"; exit 1; }
failed=0
for check in plain_v2 meditok_v1 cfg_sampled v2_refused; do
    if ! "$PYTHON" "$HERE/gpu_check.py" "$check" "$WORK" > "$WORK/$check.log" 2>&1; then
        failed=1
        tail -30 "$WORK/$check.log"
    fi
    grep -E "^(PASS|FAIL) |MedITok-AR: using|Model Runner V2|Using V2 Model Runner" "$WORK/$check.log" | sort -u || true
done

if [[ "${1:-}" != "--quick" ]]; then
    (cd "$HERE/../.." && "$PYTHON" -m pytest packages/ar_model/tests_vllm -p no:cacheprovider -p meditok.data.testing \
        -q --durations=10) || failed=1
fi
exit $failed
