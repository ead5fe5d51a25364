"""A Qwen2-based MedITok-AR folder through vLLM's own Qwen2 class (offline engine in a child process): understanding
and generation equal the transformers path's greedy outputs on the same folder (vLLM's Llama class could not even load
it: Qwen2 has q/k/v biases)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import CAPTION, IMAGE_SIZE, QUESTION

CHILD = r"""
import io, json, sys
from pathlib import Path
from PIL import Image
from vllm import LLM, SamplingParams
from meditok.ar.vllm_plugin.client import CHAT_TEMPLATE

folder, png, question, prompt_ids, text_vocab, size = sys.argv[1], Path(sys.argv[2]), sys.argv[3], json.loads(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
llm = LLM(folder, dtype="float32", enforce_eager=True, max_model_len=1024, max_num_seqs=4,
          kv_cache_memory_bytes=256 << 20, limit_mm_per_prompt={"image": 1})
import base64
url = "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode()
messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": question}]}]
chat = llm.chat(messages, SamplingParams(temperature=0, max_tokens=12, allowed_token_ids=list(range(text_vocab))),
                chat_template=CHAT_TEMPLATE.read_text(), use_tqdm=False)[0]
image = llm.generate([{"prompt_token_ids": prompt_ids}], SamplingParams(temperature=0, max_tokens=8 * (size // 16) ** 2 + 2,
                     extra_args={"image_size": size}), use_tqdm=False)[0]
print(json.dumps({"chat_prompt": list(chat.prompt_token_ids), "chat": list(chat.outputs[0].token_ids),
                  "image": list(image.outputs[0].token_ids)}))
"""


@pytest.fixture(scope="module")
def qwen2_dir(tmp_path_factory, model_dir) -> Path:
    import torch
    import transformers
    from transformers import AutoTokenizer

    from meditok.ar.model import MedITokAR

    root = tmp_path_factory.mktemp("qwen2")
    text_tok = AutoTokenizer.from_pretrained(model_dir.parent / "text_tok")
    config = transformers.Qwen2Config(vocab_size=len(text_tok), hidden_size=128, intermediate_size=256,
                                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                      tie_word_embeddings=False, bos_token_id=text_tok.bos_token_id,
                                      eos_token_id=text_tok.eos_token_id, pad_token_id=text_tok.pad_token_id)  # fmt: skip
    torch.manual_seed(0)
    transformers.Qwen2ForCausalLM(config).save_pretrained(root / "base")
    text_tok.save_pretrained(root / "base")
    merged = root / "merged"
    MedITokAR.from_pretrained(root / "base", tokenizer=model_dir.parent / "meditok").merged().save_pretrained(merged)
    assert json.loads((merged / "config.json").read_text())["meditok_ar"]["base_architecture"] == "Qwen2ForCausalLM"
    return merged


def test_qwen2_folder_serves_understanding_and_generation(qwen2_dir, xray_png, tmp_path):
    from meditok.ar.generation import generate_image_tokens, generate_text
    from meditok.ar.model import MedITokAR

    reference = MedITokAR.from_pretrained(qwen2_dir)
    grid = (IMAGE_SIZE // 16, IMAGE_SIZE // 16)
    gen_prompt = reference.builder.generation_prompt(CAPTION, grid)
    png = tmp_path / "xray.png"
    png.write_bytes(xray_png)
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_PLUGINS": "meditok_ar",
           "VLLM_NO_USAGE_STATS": "1", "MEDITOK_VLLM_IMAGE_SIZE": str(IMAGE_SIZE), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}  # fmt: skip
    argv = [sys.executable, "-c", CHILD, str(qwen2_dir), str(png), QUESTION, json.dumps(gen_prompt),
            str(reference.layout.text_vocab_size), str(IMAGE_SIZE)]  # fmt: skip
    out = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    got = json.loads([line for line in out.stdout.splitlines() if line.startswith("{")][-1])

    # expected ids from the transformers path alone (encode_image on the bytes the child sent + the prompt builder)
    codes, image_grid = reference.encode_image(xray_png, size=IMAGE_SIZE)
    assert image_grid == grid
    question_prompt = reference.builder.question_prompt(codes, QUESTION, grid)
    assert got["chat_prompt"] == question_prompt
    expected_text = generate_text(reference, question_prompt, max_new_tokens=12, temperature=0.0)
    assert [t for t in got["chat"] if t != reference.builder.eos] == expected_text and expected_text
    expected_image = generate_image_tokens(reference, [CAPTION], grid, temperature=0.0)[0]
    assert gen_prompt[-3:] + got["image"][: 8 * grid[0] * grid[1] + 1] == expected_image
