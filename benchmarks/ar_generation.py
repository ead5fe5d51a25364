"""meditok-ar throughput on the CPU: generate_image tokens/s and images/s, and LoRA training steps/s.

    python benchmarks/ar_generation.py                     # tiny and small Llama shapes, 256x256 images (~6 min, 2 cores)
    python benchmarks/ar_generation.py --shapes tiny --size 128 --no-write

The models are built locally as the tests build them: a BPE text tokenizer trained on the IU chest X-ray reports
(torchxrayvision's wheel), a randomly initialised Llama of the given shape, a tiny MedITok saved to disk, extended
with the MedITok token layout. Generation: plain conditional sampling (temperature 1, KV cache, layout logits
constraint) of `--size` images (8*(size/16)^2 code tokens each) at batch 1 and 8. Training: LoRA (r=8, all linear)
+ trainable image tokens, AdamW, one generation sequence per sample, batch 4. This is the baseline that the vLLM
plugin must beat. Results go to BENCHMARKS.md ("meditok-ar throughput") with machine and date.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from tokenizer_speed import machine, update_section  # noqa: E402


def build(root: Path, shape: str):
    from meditok.ar.model import MedITokAR
    from meditok.ar.testing import build_llama, iu_xray_reports, report_texts, train_text_tokenizer
    from meditok.tokenizer import MedITok

    text_tok = train_text_tokenizer(report_texts(iu_xray_reports()), root / f"text_tok_{shape}", vocab_size=1000)
    llm_dir = build_llama(root / f"llama_{shape}", text_tok, shape, seed=0)
    MedITok.from_config("tiny", seed=0).save_pretrained(root / "meditok")
    return MedITokAR.from_pretrained(llm_dir, tokenizer=root / "meditok")


def time_generation(model, size: int, batch: int, repeats: int) -> dict:
    grid = size // 16
    tokens = batch * (8 * grid * grid + 1)
    model.generate_image("Chest radiograph", size=16, seed=0)  # warm-up
    runs = []
    for i in range(repeats):
        t0 = time.perf_counter()
        model.generate_image("Chest radiograph", size=size, num_images=batch, seed=i)
        runs.append(time.perf_counter() - t0)
    seconds = statistics.median(runs)
    return {"batch": batch, "seconds": seconds, "tokens_per_s": tokens / seconds, "images_per_s": batch / seconds}


def time_training(model, size: int, batch: int, steps: int, add_lora: bool = True) -> dict:
    from meditok.ar.sequences import collate

    grid = size // 16
    if add_lora:
        model.add_lora(r=8, alpha=16, target_modules="all-linear", token_training="trainable_tokens")
    generator = torch.Generator().manual_seed(0)
    sequences = [
        model.builder.generation(
            "Chest radiograph", torch.randint(0, 4096, (8, grid * grid), generator=generator), (grid, grid)
        )
        for _ in range(batch)
    ]
    inputs = collate(sequences, pad_id=model.text_tokenizer.pad_token_id)
    params = [p for p in model.llm.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    model.llm.train()
    durations = []
    for _ in range(steps + 1):
        t0 = time.perf_counter()
        loss = model.llm(**inputs).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        durations.append(time.perf_counter() - t0)
    seconds = statistics.median(durations[1:])
    state = [t for st in optimizer.state.values() for t in st.values() if torch.is_tensor(t) and t.ndim > 0]
    training_bytes = sum(t.numel() * t.element_size() for t in [*params, *state])
    training_bytes += sum(p.numel() * p.element_size() for p in params)  # gradients (freed by zero_grad, same size)
    return {
        "training_state_mib": training_bytes / 2**20,"batch": batch, "sequence_tokens": inputs["input_ids"].shape[1], "step_s": seconds,
            "steps_per_s": 1 / seconds, "tokens_per_s": inputs["attention_mask"].sum().item() / seconds}  # fmt: skip


def _vm_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def memory_child(shape: str, mode: str, size: int) -> None:
    """Run in a fresh process: memory of LoRA training (2 steps, batch 4) in one token-training mode.

    The peak-RSS high-water mark is reset after the model is built (Linux /proc/self/clear_refs), so the reported
    peak is that of training alone; the training state is summed over the real tensors."""
    with tempfile.TemporaryDirectory() as tmp:
        model = build(Path(tmp), shape)
        model.add_lora(r=8, alpha=16, target_modules="all-linear", token_training=mode)
        trainable = sum(p.numel() for p in model.llm.parameters() if p.requires_grad)
        resident = _vm_kib("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        result = time_training(model, size, 4, 2, add_lora=False)
        peak = _vm_kib("VmHWM")
    row = {"mode": mode, "trainable": trainable, "training_state_mib": result["training_state_mib"]}
    row.update({"rss_before_mib": resident / 1024, "training_peak_rss_mib": peak / 1024})
    print(json.dumps(row))


def measure_memory(shape: str, size: int) -> list[dict]:
    import subprocess

    rows = []
    for mode in ("trainable_tokens", "modules_to_save"):
        out = subprocess.run([sys.executable, __file__, "--memory-child", shape, mode, "--size", str(size)],
                             capture_output=True, text=True, check=True)  # fmt: skip
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return rows


def render(results: dict) -> str:
    lines = [
        "## meditok-ar throughput",
        "",
        f"`{results['command']}` — {results['date']}, {results['machine']}. {results['size']}x{results['size']} images "
        f"({8 * (results['size'] // 16) ** 2} code tokens each), fp32, median of {results['repeats']} runs. Tiny MedITok as "
        "the image tokenizer (decoding cost is included in generation).",
        "",
        "| Llama shape | params | generate batch | s | tokens/s | images/s |",
        "|---|---|---|---|---|---|",
    ]
    for shape, entry in results["shapes"].items():
        for g in entry["generation"]:
            lines.append(f"| {shape} | {entry['params']:,} | {g['batch']} | {g['seconds']:.1f} | {g['tokens_per_s']:.0f} | "
                         f"{g['images_per_s']:.3f} |")  # fmt: skip
    lines += [
        "",
        "| Llama shape | train batch | tokens/sequence | s/step | steps/s | tokens/s |",
        "|---|---|---|---|---|---|",
    ]
    for shape, entry in results["shapes"].items():
        t = entry["training"]
        lines.append(f"| {shape} | {t['batch']} | {t['sequence_tokens']} | {t['step_s']:.2f} | {t['steps_per_s']:.2f} | "
                     f"{t['tokens_per_s']:.0f} |")  # fmt: skip
    lines += ["", "Token training modes (a fresh process each: build, LoRA, 2 training steps at batch 4; "
              "training state = trainable weights + gradients + AdamW moments, summed over the real tensors; peak RSS of the "
              "training steps, high-water mark reset after the build):", "",
              "| Llama shape | mode | trainable params | training state MiB | RSS before training MiB | peak RSS in training MiB |",
              "|---|---|---|---|---|---|"]  # fmt: skip
    for shape, entry in results["shapes"].items():
        for m in entry.get("memory", []):
            lines.append(
                f"| {shape} | {m['mode']} | {m['trainable']:,} | {m['training_state_mib']:.1f} | "
                f"{m['rss_before_mib']:.0f} | {m['training_peak_rss_mib']:.0f} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=["tiny", "small"])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--train-steps", type=int, default=3)
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--memory-child", nargs=2, metavar=("SHAPE", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        memory_child(*args.memory_child, args.size)
        return
    results = {
        "command": " ".join(["python benchmarks/ar_generation.py", *sys.argv[1:]]),
        "date": datetime.date.today().isoformat(),
        "machine": machine(),
        "size": args.size,
        "repeats": args.repeats,
        "shapes": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        for shape in args.shapes:
            model = build(Path(tmp), shape)
            entry = {"params": sum(p.numel() for p in model.llm.parameters())}
            entry["generation"] = [time_generation(model, args.size, b, args.repeats) for b in (1, 8)]
            entry["training"] = time_training(model, args.size, 4, args.train_steps)
            entry["memory"] = measure_memory(shape, args.size)
            results["shapes"][shape] = entry
            print(json.dumps({shape: entry}), flush=True)
    print(json.dumps(results, indent=2))
    if not args.no_write:
        update_section("meditok-ar throughput", render(results))


if __name__ == "__main__":
    main()
