#!/usr/bin/env bash
# MedITok on a GPU in one short run (issue 15.3): images/s of encode and decode at batch 1/8/32/128 in bf16 and fp32,
# peak GPU memory, and how many codes bf16 gives identical to fp32. Full model (meditok-l, 696 M parameters) on
# deterministic random weights (seed 0; no weights file needed), 256x256 inputs. Under 8 minutes on one H200.
#
#   bash benchmarks/gpu.sh                        # CUDA, from the repository root; prints a table and JSON
#   bash benchmarks/gpu.sh --device cpu --quick   # the same code on the CPU, tiny config, 64 px (the test runs this)
#   OUT=results/ bash benchmarks/gpu.sh           # also writes $OUT/gpu_bench.json
#
# Installs what it needs: meditok-tokenizer from this checkout (no dependencies are fetched when torch, einops,
# safetensors, pyyaml, numpy, pillow and tqdm are already there, as on a CUDA image with torch; otherwise pip
# installs them). The machine's own CUDA torch is used as it is; nothing else is downloaded.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"

if ! "$PYTHON" -c "import meditok.tokenizer" 2>/dev/null; then
    if "$PYTHON" -c "import torch, einops, safetensors, yaml, numpy, PIL, tqdm" 2>/dev/null; then
        "$PYTHON" -m pip install -q --no-deps --no-build-isolation ./packages/tokenizer 2>/dev/null \
            || export PYTHONPATH="$PWD/packages/tokenizer/src${PYTHONPATH:+:$PYTHONPATH}"  # no hatchling offline
    else
        "$PYTHON" -m pip install -q ./packages/tokenizer
    fi
fi

exec "$PYTHON" - "$@" <<'PY'
import argparse, json, os, sys, time

import torch

from meditok.tokenizer import MedITok

parser = argparse.ArgumentParser(prog="benchmarks/gpu.sh")
parser.add_argument("--device", default="cuda")
parser.add_argument("--quick", action="store_true", help="tiny config, 64 px, batches 1 and 2 (a CPU smoke run)")
parser.add_argument("--batches", type=int, nargs="+")
parser.add_argument("--repeats", type=int, default=3)
args = parser.parse_args()
if args.device.startswith("cuda") and not torch.cuda.is_available():
    sys.exit("gpu.sh: no CUDA device visible to torch (torch %s); run with --device cpu --quick to try it on the CPU"
             % torch.__version__)
config, size = ("tiny", 64) if args.quick else ("meditok-l", 256)
batches = args.batches or ([1, 2] if args.quick else [1, 8, 32, 128])
device = torch.device(args.device)
if device.type == "cuda":
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32: TF32 would be a third precision
    torch.backends.cudnn.allow_tf32 = False


def sync():
    if device.type == "cuda":
        torch.cuda.synchronize()


# Deterministic weights: initialised on the CPU with a fixed seed, then moved, so every machine has the same model.
t0 = time.perf_counter()
reference = MedITok.from_config(config, seed=0)
state = reference.state_dict()
build_s = time.perf_counter() - t0
generator = torch.Generator().manual_seed(0)
# Smooth images (a low-resolution random field, upsampled) look more like anatomy to the encoder than white noise.
low = torch.rand(max(batches), 3, size // 16, size // 16, generator=generator) * 2 - 1
images = torch.nn.functional.interpolate(low, size=(size, size), mode="bicubic", align_corners=False).clamp(-1, 1)
agreement_images = images[:8]

rows, codes_by_dtype = [], {}
for dtype in (torch.bfloat16, torch.float32):
    tok = MedITok.from_state_dict({k: v.clone() for k, v in state.items()}, config, device=device, dtype=dtype)
    name = str(dtype).split(".")[-1]
    codes_by_dtype[name] = torch.cat([tok.encode(agreement_images[i : i + 1].to(device)) for i in range(len(agreement_images))]).cpu()
    for batch in batches:
        x = images[:batch].to(device)
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        try:
            tok.decode(tok.encode(x))  # warm-up: kernels, allocator
            enc, dec = [], []
            for _ in range(args.repeats):
                sync(); t0 = time.perf_counter()
                codes = tok.encode(x)
                sync(); t1 = time.perf_counter()
                tok.decode(codes)
                sync(); t2 = time.perf_counter()
                enc.append(t1 - t0); dec.append(t2 - t1)
        except torch.OutOfMemoryError:
            rows.append({"dtype": name, "batch": batch, "error": "out of memory"})
            print(f"{name:9s} batch {batch:4d}: out of memory", flush=True)
            continue
        e, d = sorted(enc)[len(enc) // 2], sorted(dec)[len(dec) // 2]
        peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
        rows.append({"dtype": name, "batch": batch, "encode_img_s": batch / e, "decode_img_s": batch / d,
                     "encode_s": e, "decode_s": d, "peak_gpu_gib": peak})
        mem = f", peak GPU memory {peak:.2f} GiB" if peak is not None else ""
        print(f"{name:9s} batch {batch:4d}: encode {batch / e:8.1f} img/s, decode {batch / d:8.1f} img/s{mem}", flush=True)
    del tok

identical = float((codes_by_dtype["bfloat16"] == codes_by_dtype["float32"]).float().mean())
summary = {
    "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
    "torch": torch.__version__, "config": config, "size": size, "build_s": build_s,
    "identical_codes_bf16_vs_fp32": identical, "agreement_images": len(agreement_images), "rows": rows,
}
print(f"codes identical bf16 vs fp32: {100 * identical:.2f} % of {codes_by_dtype['float32'].numel()} "
      f"on {len(agreement_images)} images")
print(json.dumps(summary))
if os.environ.get("OUT"):
    os.makedirs(os.environ["OUT"], exist_ok=True)
    with open(os.path.join(os.environ["OUT"], "gpu_bench.json"), "w") as handle:
        json.dump(summary, handle, indent=2)
PY
