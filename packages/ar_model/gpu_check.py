"""What only a GPU build of vLLM 0.32 can show about the MedITok plugin (issue 14.2); run by gpu_check.sh.

Not collected by pytest (the CPU CI has no GPU, and a skipped test fails CI). Each check runs in its own process
(``python gpu_check.py CHECK FOLDER``) because the model runner is chosen per process from the environment. Every
check prints one ``PASS``/``FAIL`` line with what it measured; the exit status is non-zero on a failure.

Checks (vLLM's offline ``LLM``, in-process engine so that the scheduler and runner can be inspected):
- ``plain_v2``: a plain Llama folder, with meditok-ar installed, is served by Model Runner V2 (the GPU default) and
  generates: V2's loader accepted the plugin's ``vllm.logits_processors`` entry points (before issue 14 it raised
  "is not a subclass of ...LogitsProcessor").
- ``meditok_v1``: a MedITok-AR folder gets the V1 runner (the plugin's config hook) and the paired scheduler variant
  vLLM's async decision calls for (``PairedAsyncScheduler`` when async scheduling is on, the GPU default), and a
  layout-constrained greedy image is valid.
- ``cfg_sampled``: a sampled guided pair (same seed, CFG) under that scheduler and runner: both rows equal, and a
  second run with the same seed reproduces it (the lockstep the CPU tests prove for the synchronous scheduler).
- ``v2_refused``: ``VLLM_USE_V2_MODEL_RUNNER=1`` with a MedITok-AR folder fails at start-up with the plugin's message.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

IMAGE_SIZE = 64
CAPTION = "Chest radiograph. Heart size normal."


def build(root: Path) -> None:
    """A tiny plain Llama and its MedITok-AR extension (the tests' shapes; random weights, real code paths)."""
    from meditok.ar.model import MedITokAR
    from meditok.ar.testing import build_llama, train_text_tokenizer
    from meditok.tokenizer import MedITok

    readme = Path(__file__).with_name("README.md").read_text().split("\n\n")  # any real text: a BPE for tests
    text_tok = train_text_tokenizer(readme, root / "text_tok", vocab_size=1000)
    llama = build_llama(root / "llama", text_tok, "tiny", seed=0, hidden_size=128, intermediate_size=256)
    MedITok.from_config("tiny", seed=0).eval().save_pretrained(root / "meditok")
    MedITokAR.from_pretrained(llama, tokenizer=root / "meditok").merged().save_pretrained(root / "merged")


def _llm(folder: Path):
    from vllm import LLM

    # float32 and a fixed KV cache: the CPU tests' settings (the script also dry-runs on the CPU build)
    return LLM(str(folder), dtype="float32", max_model_len=1024, enforce_eager=True, kv_cache_memory_bytes=256 << 20,
               seed=0)  # fmt: skip


def _prompts(folder: Path) -> tuple[list[int], list[int], int]:
    import json

    from transformers import AutoTokenizer

    from meditok.ar.chat_format import sequence_builder
    from meditok.ar.layout import TokenLayout

    layout = TokenLayout.from_config(json.loads((folder / "config.json").read_text()))
    builder = sequence_builder(layout, AutoTokenizer.from_pretrained(folder))
    grid = (IMAGE_SIZE // 16, IMAGE_SIZE // 16)
    n_codes = layout.num_codebooks * grid[0] * grid[1]
    return builder.generation_prompt(CAPTION, grid), builder.generation_prompt("", grid), n_codes


def check(name: str, root: Path) -> str:
    from vllm import SamplingParams

    if name == "plain_v2":
        llm = _llm(root / "llama")
        config = llm.llm_engine.vllm_config
        out = llm.generate({"prompt_token_ids": [1, 5, 9]}, SamplingParams(max_tokens=8, temperature=0))
        assert config.use_v2_model_runner, "expected Model Runner V2 for a plain Llama on this GPU build"
        assert len(out[0].outputs[0].token_ids) == 8
        return "plain Llama on Model Runner V2 with the plugin installed: generates 8 tokens"
    if name == "meditok_v1":
        llm = _llm(root / "merged")
        config = llm.llm_engine.vllm_config
        scheduler = llm.llm_engine.engine_core.engine_core.scheduler  # in-process engine (see main)
        from vllm.triton_utils import HAS_TRITON

        assert not config.use_v2_model_runner, "a MedITok-AR folder was given Model Runner V2"
        switched = os.environ.get("VLLM_USE_V2_MODEL_RUNNER") == "0"  # set by the plugin's hook when V2 was the default
        assert switched or not HAS_TRITON, "V1 without the plugin's switch on a build with Triton"
        expected = "PairedAsyncScheduler" if config.scheduler_config.async_scheduling else "PairedScheduler"
        assert type(scheduler).__name__ == expected, (type(scheduler).__name__, expected)
        cond, _, n_codes = _prompts(root / "merged")
        params = SamplingParams(max_tokens=n_codes + 2, temperature=0, extra_args={"image_size": IMAGE_SIZE})
        ids = list(llm.generate({"prompt_token_ids": cond}, params)[0].outputs[0].token_ids)
        from meditok.ar.layout import TokenLayout, token_ids_to_codes

        layout = TokenLayout.from_config(dict(config.model_config.hf_config.meditok_ar))
        token_ids_to_codes(cond[-3:] + ids[: n_codes + 1], layout)  # LayoutError if the layout broke
        asynchronous = config.scheduler_config.async_scheduling
        return f"MedITok-AR on V1 (switched from V2 by the plugin: {switched}), {expected} (async={asynchronous})"
    if name == "cfg_sampled":
        llm = _llm(root / "merged")
        cond, uncond, n_codes = _prompts(root / "merged")
        runs = []
        for attempt in range(2):
            xargs = {"image_size": IMAGE_SIZE, "cfg_scale": 3.0, "cfg_pair": f"gpu-{attempt}"}
            params = SamplingParams(max_tokens=n_codes + 2, temperature=1.0, seed=7, extra_args=xargs)
            outs = llm.generate([{"prompt_token_ids": cond}, {"prompt_token_ids": uncond}], [params, params])
            a, b = (list(o.outputs[0].token_ids) for o in outs)
            assert a == b and len(a) >= n_codes + 1, f"pair split: {len(a)} vs {len(b)} tokens"
            runs.append(a)
        assert runs[0] == runs[1], "the same seed did not reproduce the guided pair"
        return f"sampled CFG pair in lockstep ({n_codes} codes), reproduced by its seed"
    if name == "v2_refused":
        os.environ["VLLM_USE_V2_MODEL_RUNNER"] = "1"
        try:
            _llm(root / "merged")
        except Exception as error:  # vLLM wraps config errors (pydantic ValidationError)
            assert "needs vLLM's V1 model runner" in str(error), str(error)[-500:]
            return "VLLM_USE_V2_MODEL_RUNNER=1 refused at start-up with the plugin's message"
        raise AssertionError("VLLM_USE_V2_MODEL_RUNNER=1 was accepted for a MedITok-AR folder")
    raise SystemExit(f"unknown check {name!r}")


def main() -> int:
    name, root = sys.argv[1], Path(sys.argv[2])
    if name == "build":
        build(root)
        return 0
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the engine in this process: inspectable
    try:
        print(f"PASS {name}: {check(name, root)}", flush=True)
        return 0
    except AssertionError as error:
        print(f"FAIL {name}: {error}", flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
