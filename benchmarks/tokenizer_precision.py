"""Reduced precision and less work, each measured against fp32 on the same machine in one run (issue 15.2).

    python benchmarks/tokenizer_precision.py --work /tmp/precision          # meditok-l, 256x256, ~15-25 min on 2 cores
    python benchmarks/tokenizer_precision.py --work /tmp/p --config small --samples 4 --repeats 1   # a quick look
    python benchmarks/tokenizer_precision.py --work /tmp/p --model meditok_simple_v1.pth   # the published weights

Variants: fp32 (the baseline), bf16 (`dtype=torch.bfloat16`), int8 (`quantize="int8"`: dynamic int8 Linear in the
transformer blocks), channels-last convolutions, SDPA with the math kernel instead of the fused one (what the fused
kernel brings), torch.compile (inductor) of encoder and decoder, and batch size. Each variant runs in a fresh process
(so its peak RSS is its own) on the same weights: deterministic full-size weights (`tests/reference_weights.py`, no
trained weights are needed or read). Agreement with fp32 is measured on real offline images (meditok-data samples,
prepared through the image-input contract): the share of identical codes, the PSNR of the variant's decode of the fp32
codes against fp32's decode (decoder only), and the PSNR of the variant's own round trip against fp32's (end to end).

The same run also counts the FLOPs of one encode and one decode from the model's shapes (torch's FlopCounterMode:
matmuls, convolutions incl. depthwise and transposed, attention), and measures the machine's GEMM peak (fp32 and bf16
torch.mm, int8 dynamic Linear) so achieved GFLOP/s can be read against it. Writes results.json, results.md and
throughput.png into --work; the markdown goes into BENCHMARKS.md by hand with the load average it reports.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {
    # name: (batch sizes timed, description)
    "fp32": ([1, 2, 4], "fp32, fused SDPA (the default)"),
    "bf16": ([1, 2, 4], "bf16 encoder/decoder (dtype=torch.bfloat16); projections + quantizer fp32"),
    "fp16": ([1, 2, 4], "fp16 encoder/decoder (dtype=torch.float16; AVX512-FP16 where the CPU has it)"),
    "bf16_decoder": ([1, 2, 4], "fp32 encoder, bf16 decoder (decoder_dtype=torch.bfloat16): codes as fp32"),
    "int8": ([1, 2, 4], 'dynamic int8 Linear in the transformer blocks (quantize="int8")'),
    "channels_last": ([1], "fp32, model and input in channels-last memory format"),
    "sdpa_math": ([1], "fp32, SDPA restricted to the math kernel (no fused attention)"),
    "compile": ([1], "fp32, torch.compile (inductor) of encoder and decoder"),
}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------ machine limits


def gemm_peak(seconds: float = 2.0) -> dict:
    """Best GFLOP/s of square fp32 / bf16 torch.mm and of an int8 dynamic Linear (GOP/s, 2 ops per MAC)."""
    import warnings

    def best(fn, flops: float) -> float:
        fn()
        rates, start = [], time.perf_counter()
        while time.perf_counter() - start < seconds:
            t0 = time.perf_counter()
            fn()
            rates.append(flops / (time.perf_counter() - t0) / 1e9)
        return max(rates)

    out = {}
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        for n in (1024, 2048, 3072):
            a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
            out[f"{str(dtype).split('.')[-1]}_mm_{n}"] = best(lambda a=a, b=b: a @ b, 2 * n**3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        linear = torch.nn.Linear(1024, 4096)
        quantized = torch.ao.quantization.quantize_dynamic(torch.nn.Sequential(linear), {torch.nn.Linear})
    x = torch.randn(1024, 1024)
    with torch.inference_mode():
        out["int8_dynamic_linear_1024x1024x4096"] = best(lambda: quantized(x), 2 * 1024 * 1024 * 4096)
        out["fp32_linear_1024x1024x4096"] = best(lambda: linear(x), 2 * 1024 * 1024 * 4096)
    return out


def count_flops(tok, size: int) -> dict:
    """FLOPs of one image's encode and decode, from the shapes (FlopCounterMode), with a per-part breakdown."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.rand(1, 3, size, size) * 2 - 1
    result = {}
    for name, run in (("encode", lambda: tok.encode(x)), ("decode", lambda: tok.decode(tok.encode(x)))):
        with FlopCounterMode(display=False, depth=3) as counter:
            run()
        total = counter.get_total_flops()
        parts = {k: sum(v.values()) for k, v in counter.get_flop_counts().items() if k.count(".") == 1}
        result[name] = {"flops": total, "parts": parts}
    # decode was counted with its encode: keep the decode part alone
    result["decode"]["flops"] -= result["encode"]["flops"]
    return result


# ------------------------------------------------------------------------------------------------ one variant


def prepare_samples(work: Path, count: int, size: int) -> Path:
    """Real offline images through the image-input contract, one per modality first, saved for every worker."""
    from meditok.data.samples import find_samples
    from meditok.tokenizer.image_files import load_image
    from meditok.tokenizer.preprocessing import ImageInput, preprocess

    spec = ImageInput(size=size)
    by_modality: dict[str, list] = {}
    for sample in sorted((s for s in find_samples() if s.kind == "image"), key=lambda s: s.name):
        by_modality.setdefault(sample.modality, []).append(sample)
    # round robin over the modalities (CT, MR, X-ray, ultrasound, pathology, fundus, dermoscopy), first files first
    order = [
        group[i] for i in range(max(map(len, by_modality.values()))) for group in by_modality.values() if i < len(group)
    ]
    chosen = []
    for sample in order:
        if len(chosen) == count:
            break
        try:
            chosen.append((sample.name, preprocess(load_image(sample.path, spec), spec)))
        except ValueError:
            continue
    path = work / "samples.pt"
    torch.save({"names": [n for n, _ in chosen], "images": torch.cat([t for _, t in chosen])}, path)
    return path


def build_weights(work: Path, config: str) -> Path:
    """Deterministic full-size weights (seeded per tensor name) saved once as a release folder."""
    from meditok.tokenizer import MedITok

    folder = work / f"weights-{config}"
    if (folder / "config.json").exists():
        return folder
    if config == "meditok-l":
        sys.path.insert(0, str(ROOT / "packages/tokenizer/tests"))
        from reference_weights import seeded_state_dict

        tok = MedITok.from_state_dict(seeded_state_dict(), "meditok-l")
    else:
        tok = MedITok.from_config(config, seed=0)
    tok.save_pretrained(folder)
    return folder


def load_variant(weights: Path, variant: str):
    from meditok.tokenizer import MedITok

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(variant, torch.float32)
    decoder_dtype = torch.bfloat16 if variant == "bf16_decoder" else None
    quantize = "int8" if variant == "int8" else None
    tok = MedITok.from_pretrained(weights, dtype=dtype, quantize=quantize, decoder_dtype=decoder_dtype)
    if variant == "channels_last":
        tok.to(memory_format=torch.channels_last)
    if variant == "compile":
        tok.encoder.compile()
        tok.decoder.compile()
    return tok


def run_variant(args: argparse.Namespace) -> dict:
    from contextlib import nullcontext

    from torch.nn.attention import SDPBackend, sdpa_kernel

    from meditok.tokenizer.preprocessing import psnr

    variant, work = args.worker, Path(args.work)
    t0 = time.perf_counter()
    tok = load_variant(Path(args.weights), variant)
    load_s = time.perf_counter() - t0
    samples = torch.load(work / "samples.pt")
    images = samples["images"]
    if variant == "channels_last":
        images = images.contiguous(memory_format=torch.channels_last)
    context = sdpa_kernel([SDPBackend.MATH]) if variant == "sdpa_math" else nullcontext()
    out: dict = {"variant": variant, "load_s": load_s}
    with context:
        # warm-up (and, for compile, the compilation itself) on a batch of 1
        t0 = time.perf_counter()
        tok.decode(tok.encode(images[:1]))
        out["warmup_s"] = time.perf_counter() - t0
        rows = []
        for batch in VARIANTS[variant][0]:
            x = images[:batch] if batch <= len(images) else images[:1].repeat(batch, 1, 1, 1)
            enc, dec, enc_cpu, dec_cpu = [], [], [], []
            # batch 1 follows the warm-up and is timed --repeats times; larger batches once (a slow shared CPU)
            for _ in range(args.repeats if batch == 1 else 1):
                # process CPU time too: on a shared machine it moves far less with the load than the wall time
                c0, t0 = time.process_time(), time.perf_counter()
                codes = tok.encode(x)
                c1, t1 = time.process_time(), time.perf_counter()
                tok.decode(codes)
                enc.append(t1 - t0)
                dec.append(time.perf_counter() - t1)
                enc_cpu.append(c1 - c0)
                dec_cpu.append(time.process_time() - c1)
            rows.append({"batch": batch, "encode_s": statistics.median(enc), "decode_s": statistics.median(dec),
                         "encode_cpu_s": statistics.median(enc_cpu), "decode_cpu_s": statistics.median(dec_cpu)})  # fmt: skip
            log(f"{variant} B={batch}: encode {rows[-1]['encode_s']:.2f} s, decode {rows[-1]['decode_s']:.2f} s")
        out["timings"] = rows
        # agreement on the real samples, one image at a time (no recompiles, no batch effects)
        codes = torch.cat([tok.encode(images[i : i + 1]) for i in range(len(images))])
        recon = torch.cat([tok.decode(codes[i : i + 1]) for i in range(len(images))])
        reference_file = work / "reference.pt"
        if variant == "fp32":
            torch.save({"codes": codes, "recon": recon}, reference_file)
        reference = torch.load(reference_file)
        same_codes = reference["recon"] if variant == "fp32" else torch.cat(
            [tok.decode(reference["codes"][i : i + 1]) for i in range(len(images))]
        )  # fmt: skip
    out["identical_codes"] = float((codes == reference["codes"]).float().mean())
    out["identical_codes_per_image"] = (codes == reference["codes"]).float().mean(dim=(1, 2)).tolist()
    out["decode_psnr_vs_fp32"] = float(psnr(same_codes.float(), reference["recon"]))
    out["roundtrip_psnr_vs_fp32"] = float(psnr(recon.float(), reference["recon"]))
    out["roundtrip_psnr_vs_input"] = float(psnr(recon.float(), images.float()))
    out["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    if variant == "fp32":
        out["flops"] = count_flops(tok, images.shape[-1])
    return out


# ------------------------------------------------------------------------------------------------ report


def report(results: dict) -> str:
    base = {r["batch"]: r for r in results["variants"]["fp32"]["timings"]}
    flops = results["variants"]["fp32"]["flops"]
    enc_flops, dec_flops = flops["encode"]["flops"], flops["decode"]["flops"]
    lines = [
        "| variant | batch | encode s (CPU s) | decode s (CPU s) | encode img/s | decode img/s | encode speed-up | "
        "decode speed-up | "
        "encode GFLOP/s | decode GFLOP/s | identical codes | decode PSNR vs fp32 (same codes) | round trip PSNR vs fp32 "
        "| peak RSS GiB |",
        "|---" * 14 + "|",
    ]
    for name, item in results["variants"].items():
        if "error" in item:
            lines.append(f"| {name} | – | failed: {item['error'][:120]} |" + " |" * 11)
            continue
        for row in item["timings"]:
            b, e, d = row["batch"], row["encode_s"], row["decode_s"]
            ref = base.get(b)
            up_e = f"{ref['encode_s'] / e:.2f}x" if ref else "–"
            up_d = f"{ref['decode_s'] / d:.2f}x" if ref else "–"
            ec, dc = row.get("encode_cpu_s", float("nan")), row.get("decode_cpu_s", float("nan"))
            lines.append(
                f"| {name} | {b} | {e:.2f} ({ec:.2f}) | {d:.2f} ({dc:.2f}) | {b / e:.2f} | {b / d:.2f} | {up_e} | {up_d} | "
                f"{enc_flops * b / e / 1e9:.0f} | {dec_flops * b / d / 1e9:.0f} | {100 * item['identical_codes']:.2f} % | "
                f"{item['decode_psnr_vs_fp32']:.1f} dB | {item['roundtrip_psnr_vs_fp32']:.1f} dB | "
                f"{item['peak_rss_gib']:.2f} |"
            )
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    names, enc, dec = [], [], []
    for name, item in results["variants"].items():
        if "timings" in item:
            row = item["timings"][0]
            names.append(name)
            enc.append(row["batch"] / row["encode_s"])
            dec.append(row["batch"] / row["decode_s"])
    xs = range(len(names))
    ax.bar([x - 0.2 for x in xs], enc, 0.4, label="encode")
    ax.bar([x + 0.2 for x in xs], dec, 0.4, label="decode")
    ax.set_xticks(list(xs), names)
    ax.set_ylabel("images/s (batch 1)")
    ax.set_title(f"{results['config']} {results['size']}x{results['size']}: {results['machine'][:60]}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, required=True, help="folder for the weights, samples and results")
    parser.add_argument("--config", default="meditok-l")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--samples", type=int, default=6, help="real images for the agreement")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--model", type=Path, help="a release folder / .pth to measure instead of seeded weights")
    parser.add_argument("--batches", type=int, nargs="+", help="batch sizes for fp32/bf16/int8 (default 1 2 4)")
    parser.add_argument(
        "--timeout", type=int, default=1800, help="seconds per variant before it is reported unfinished"
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--weights", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.batches:
        for name in ("fp32", "bf16", "fp16", "bf16_decoder", "int8"):
            VARIANTS[name] = (args.batches, VARIANTS[name][1])
    if args.worker:
        print(json.dumps(run_variant(args)))
        return 0

    from meditok.tokenizer.benchmark import machine

    args.work.mkdir(parents=True, exist_ok=True)
    results: dict = {"machine": machine(), "config": args.config, "size": args.size, "date": time.ctime()}
    results["load_before"] = os.getloadavg()
    log("GEMM peak")
    results["gemm_peak_gflops"] = gemm_peak()
    log(f"GEMM peak: {json.dumps({k: round(v) for k, v in results['gemm_peak_gflops'].items()})}")
    weights = args.model or build_weights(args.work, args.config)
    prepare_samples(args.work, args.samples, args.size)
    order = ["fp32"] + [v for v in args.variants if v != "fp32"]
    results["variants"] = {}
    for variant in order:
        log(f"variant {variant} ({VARIANTS[variant][1]})")
        cmd = [sys.executable, __file__, "--work", str(args.work), "--worker", variant, "--weights", str(weights),
               "--repeats", str(args.repeats)] + (["--batches", *map(str, args.batches)] if args.batches else [])  # fmt: skip
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
        except subprocess.TimeoutExpired:
            results["variants"][variant] = {"error": f"not finished within --timeout {args.timeout} s"}
            continue
        sys.stderr.write(done.stderr[-3000:] if done.returncode else "")
        if done.returncode != 0:
            results["variants"][variant] = {"error": done.stderr.strip().splitlines()[-1] if done.stderr else "failed"}
            continue
        results["variants"][variant] = json.loads(done.stdout.strip().splitlines()[-1])
    results["load_after"] = os.getloadavg()
    (args.work / "results.json").write_text(json.dumps(results, indent=2))
    table = report(results)
    (args.work / "results.md").write_text(table + "\n")
    plot(results, args.work / "throughput.png")
    print(table)
    print(f"load average before {results['load_before']}, after {results['load_after']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
