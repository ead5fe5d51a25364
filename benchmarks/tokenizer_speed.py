"""Tokenizer speed and memory at full size (meditok-l): encode and decode images/s, and peak memory.

    python benchmarks/tokenizer_speed.py                          # CPU, fp32, B=1,2,4 at 256x256 (~4 min on 2 cores)
    python benchmarks/tokenizer_speed.py --weights meditok_simple_v1.pth --device cuda --dtype bfloat16
    python benchmarks/tokenizer_speed.py --reference-src ~/meditok_ref --reference-python ~/ref-venv/bin/python

With --reference-src (a checkout of github Masaaki-75/meditok, run with an interpreter that has its requirements,
timm 1.0.8 and torchvision; never part of this repo) the reference's img_to_idx + idx_to_img are timed on the same
weights and batch in a subprocess, between two runs of ours, and its fresh-process peak RSS is recorded too.

Without --weights the script writes deterministic full-size weights in the published format (a bare torch.save
state dict, 2.8 GB) to a temporary folder, so the numbers include the real loading path. Peak RSS is measured in a
fresh process that loads that `.pth` and runs one B=2 batch, which is what a user's script does. Results are
printed and written into BENCHMARKS.md (section "meditok-tokenizer speed") with the machine and date.
"""

from __future__ import annotations

import argparse
import datetime
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from meditok.tokenizer.benchmark import machine, measure_rss, time_batches  # noqa: F401  (ar_generation imports machine)

ROOT = Path(__file__).resolve().parents[1]
SECTION = "meditok-tokenizer speed"


def write_published_format_weights(path: Path) -> Path:
    sys.path.insert(0, str(ROOT / "packages/tokenizer/tests"))
    from reference_weights import seeded_state_dict

    torch.save(seeded_state_dict(), path)
    return path


REFERENCE_CODE = """
import json, resource, sys, time, torch
sys.path.insert(0, {src!r})
from models.meditok import build_meditok
torch.set_num_threads({threads})
t0 = time.perf_counter()
model = build_meditok(ckpt_path={weights!r}).eval()
load = time.perf_counter() - t0
x = torch.rand({batch}, 3, {size}, {size}, generator=torch.Generator().manual_seed({batch})) * 2 - 1
runs = []
with torch.no_grad():
    model.idx_to_img(model.img_to_idx(x))
    for _ in range({repeats}):
        w0, c0 = time.perf_counter(), time.process_time()
        codes = model.img_to_idx(x)
        w1 = time.perf_counter()
        model.idx_to_img(codes)
        runs.append((w1 - w0, time.perf_counter() - w1, time.process_time() - c0))
print(json.dumps({{"load_s": load, "runs": runs, "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}}))
"""


def time_reference(python: str, src: Path, weights: Path, batch: int, size: int, repeats: int) -> dict:
    code = REFERENCE_CODE.format(
        src=str(src), weights=str(weights), batch=batch, size=size, repeats=repeats, threads=torch.get_num_threads()
    )
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, check=True)
    data = json.loads(out.stdout.strip().splitlines()[-1])
    data["encode_decode_s"] = statistics.median(r[0] + r[1] for r in data["runs"])
    data["cpu_s"] = statistics.median(r[2] for r in data["runs"])
    return data


def render(results: dict) -> str:
    lines = [
        f"## {SECTION}",
        "",
        f"`{results['command']}` — {results['date']}, {results['machine']}. meditok-l ({results['parameters']:,} "
        f"parameters), {results['dtype']}, {results['size']}x{results['size']}, median of {results['repeats']} runs "
        f"after a warm-up, under torch.inference_mode.",
        "",
        "| batch | encode s | decode s | encode+decode s | encode img/s | decode img/s |",
        "|---|---|---|---|---|---|",
    ]
    for r in results["rows"]:
        lines.append(
            f"| {r['batch']} | {r['encode_s']:.2f} | {r['decode_s']:.2f} | {r['encode_decode_s']:.2f} | "
            f"{r['encode_img_s']:.2f} | {r['decode_img_s']:.2f} |"
        )
    mem = results["memory"]
    lines += [
        "",
        f"Peak RSS of a fresh process that loads the published-format `.pth` (2.8 GB) and encodes+decodes one "
        f"B=2 batch: **{mem['peak_rss_gib']:.2f} GiB**"
        + (f"; peak GPU memory {mem['peak_gpu_gib']:.2f} GiB" if mem.get("peak_gpu_gib") else "")
        + ".",
    ]
    ref = results.get("reference")
    if ref:
        ours = results["rows_around_reference"][0]
        lines += [
            "",
            "Against the reference implementation (github Masaaki-75/meditok, built outside this repo with timm 1.0.8, "
            f"same machine, same weights, B={ours['batch']}; ours timed before and after the reference, median):",
            "",
            "| | load s | encode+decode s | process CPU s | peak RSS GiB (fresh process: load + one batch) |",
            "|---|---|---|---|---|",
            f"| reference | {ref['load_s']:.1f} | {ref['encode_decode_s']:.2f} | {ref['cpu_s']:.1f} | {ref['peak_rss_gib']:.2f} |",
            f"| meditok-tokenizer | {results['load_s']:.1f} | {ours['encode_decode_s']:.2f} | {ours['cpu_s']:.1f} "
            f"| {mem['peak_rss_gib']:.2f} |",
            f"| ratio | {results['load_s'] / ref['load_s']:.2f}x | **{ours['encode_decode_s'] / ref['encode_decode_s']:.2f}x** "
            f"| {ours['cpu_s'] / ref['cpu_s']:.2f}x | **{mem['peak_rss_gib'] / ref['peak_rss_gib']:.2f}x** |",
        ]
    return "\n".join(lines) + "\n"


def update_section(section: str, section_text: str) -> None:
    """Replace (or append) the `## {section}` block of BENCHMARKS.md."""
    path = ROOT / "BENCHMARKS.md"
    text = (
        path.read_text()
        if path.exists()
        else "# Benchmarks\n\nMeasured numbers, each with its command, machine and date.\n"
    )
    start = text.find(f"## {section}")
    if start >= 0:
        end = text.find("\n## ", start + 1)
        text = text[:start] + section_text.rstrip("\n") + "\n" + (text[end:] if end >= 0 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section_text
    path.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, help="published-format .pth (default: write seeded full-size weights)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--reference-src", type=Path, help="checkout of the reference repo (outside this repo)")
    parser.add_argument("--reference-python", default=sys.executable, help="interpreter with the reference's deps")
    parser.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = parser.parse_args()

    from meditok.tokenizer import MedITok

    with tempfile.TemporaryDirectory() as tmp:
        weights = args.weights or write_published_format_weights(Path(tmp) / "meditok_seeded.pth")
        memory = measure_rss(weights, args.device, args.dtype, args.size)
        t0 = time.perf_counter()
        tok = MedITok.from_pretrained(weights, device=args.device, dtype=getattr(torch, args.dtype))
        load_s = time.perf_counter() - t0
        rows = time_batches(tok, args.batch_sizes, args.size, args.repeats, args.device)
        reference, around = None, []
        if args.reference_src:
            compare_batch = 2 if 2 in args.batch_sizes else args.batch_sizes[0]
            before = next(r for r in rows if r["batch"] == compare_batch)
            reference = time_reference(
                args.reference_python, args.reference_src, weights, compare_batch, args.size, args.repeats
            )
            after = time_batches(tok, [compare_batch], args.size, args.repeats, args.device)[0]
            around = [
                {
                    **before,
                    "encode_decode_s": statistics.median([before["encode_decode_s"], after["encode_decode_s"]]),
                    "cpu_s": statistics.median([before["cpu_s"], after["cpu_s"]]),
                }
            ]
    results = {
        "command": " ".join(["python benchmarks/tokenizer_speed.py", *sys.argv[1:]]),
        "date": datetime.date.today().isoformat(),
        "machine": machine(),
        "parameters": tok.num_parameters(),
        "dtype": args.dtype,
        "size": args.size,
        "repeats": args.repeats,
        "rows": rows,
        "memory": memory,
        "load_s": load_s,
        "reference": reference,
        "rows_around_reference": around,
        "peak_rss_self_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }
    print(json.dumps(results, indent=2))
    if not args.no_write:
        update_section(SECTION, render(results))


if __name__ == "__main__":
    main()
