"""A compact-layout model (layout version 2) through the plugin: the multimodal processor (no engine) and a real
``vllm serve`` of a tiny compact folder trained so that its greedy answer depends on the image, whose images endpoint
runs the transformers path in the API server. Expected values come from the transformers path called here
(`MedITokAR.encode_image`, `builder.question_prompt`, `MedITokAR.answer`, `MedITokAR.generate_image`)."""

from __future__ import annotations

import base64
import io
import time

import numpy as np
import pytest
import requests
from conftest import CAPTION, COMPACT_ANSWERS, IMAGE_SIZE, QUESTION, data_url, mirrored_png, vllm_serve
from PIL import Image

from meditok.ar.layout import position_codes

GRID = (IMAGE_SIZE // 16, IMAGE_SIZE // 16)
MAX_TOKENS = 12


@pytest.fixture(scope="module")
def reference(compact_model_dir):
    from meditok.ar.model import MedITokAR

    model = MedITokAR.from_pretrained(compact_model_dir)
    assert model.layout.compact
    return model


@pytest.fixture(scope="module")
def server(compact_model_dir, tmp_path_factory):
    env = {"MEDITOK_VLLM_IMAGE_SIZE": str(IMAGE_SIZE), "VLLM_MEDIA_CONNECTOR": "meditok"}
    with vllm_serve(compact_model_dir, tmp_path_factory.mktemp("compact_server") / "vllm.log", env=env) as running:
        yield running


def test_processor_puts_one_placeholder_per_position_and_hands_over_the_codes(compact_model_dir, reference, xray_png):
    from vllm.config import ModelConfig
    from vllm.multimodal import MULTIMODAL_REGISTRY

    from meditok.ar.vllm_plugin import register
    from meditok.ar.vllm_plugin.processing import CODES_FIELD

    register()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEDITOK_VLLM_IMAGE_SIZE", str(IMAGE_SIZE))
        proc = MULTIMODAL_REGISTRY.create_processor(ModelConfig(model=str(compact_model_dir), dtype="float32",
                                                                max_model_len=512))  # fmt: skip
        layout = reference.layout
        prompt = [1, 50, layout.image_token_id, 60, 61]
        picture = Image.open(io.BytesIO(xray_png)).convert("RGB")
        result = proc(prompt, proc.info.parse_mm_data({"image": [picture]}))
    codes, grid = reference.encode_image(picture, size=IMAGE_SIZE)
    h, w = grid
    block = [layout.boi_token_id, layout.height_token(h), layout.width_token(w)]
    block += [layout.image_position_token_id] * (h * w) + [layout.eoi_token_id]
    assert result["prompt_token_ids"] == [1, 50, *block, 60, 61]
    (item,) = result["mm_kwargs"]["image"]
    assert np.array_equal(item[CODES_FIELD].data.numpy(), position_codes(codes, layout, grid))
    (place,) = result["mm_placeholders"]["image"]
    assert (place.offset, place.length) == (2, len(block))
    # embeddings go to the <img_pos> positions only: <boi> <h> <w> and <eoi> keep their text rows
    assert place.is_embed.tolist() == [False] * 3 + [True] * (h * w) + [False]


def _chat(url: str, image: str) -> dict:
    content = [{"type": "image_url", "image_url": {"url": image}}, {"type": "text", "text": QUESTION}]
    body = {"model": "meditok", "messages": [{"role": "user", "content": content}], "max_tokens": MAX_TOKENS,
            "temperature": 0, "return_token_ids": True}  # fmt: skip
    response = requests.post(f"{url}/v1/chat/completions", json=body, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()


def _expected(reference, image: bytes) -> tuple[list[int], list[int], str]:
    """The transformers path on the bytes the client sent: prompt ids, greedy answer ids and `answer`'s text."""
    from meditok.ar.generation import generate_text

    codes, grid = reference.encode_image(image, size=IMAGE_SIZE)
    assert grid == GRID
    prompt = reference.builder.question_prompt(codes, QUESTION, grid)
    ids = generate_text(reference, prompt, max_new_tokens=MAX_TOKENS, temperature=0.0,
                        image_codes=position_codes(codes, reference.layout, grid))  # fmt: skip
    text = reference.answer(image, QUESTION, max_new_tokens=MAX_TOKENS, temperature=0,
                            image_input={"size": IMAGE_SIZE})  # fmt: skip
    return prompt, ids, text


def test_greedy_chat_answers_equal_the_transformers_path(server, reference, xray_png, xray_dicom):
    answers = []
    for image, mime in ((xray_png, "image/png"), (mirrored_png(xray_png), "image/png"),
                        (xray_dicom.read_bytes(), "application/dicom")):  # fmt: skip
        prompt, ids, text = _expected(reference, image)
        data = _chat(server["url"], data_url(image, mime))
        assert data["prompt_token_ids"] == prompt
        choice = data["choices"][0]
        assert [t for t in choice["token_ids"] if t != reference.builder.eos] == ids
        assert choice["message"]["content"].strip() == text
        answers.append(text)
    # the trained answers depend on the image: the adapter's embeddings really reach the backbone in both paths
    assert answers[:2] == list(COMPACT_ANSWERS)


CFG_SCALE = 3.0


def _images(url: str, **body) -> list[np.ndarray]:
    response = requests.post(f"{url}/v1/images/generations", json={"size": str(IMAGE_SIZE), **body}, timeout=300)
    assert response.status_code == 200, response.text
    pictures = [Image.open(io.BytesIO(base64.b64decode(item["b64_json"]))) for item in response.json()["data"]]
    assert all(p.format == "PNG" and p.size == (IMAGE_SIZE, IMAGE_SIZE) for p in pictures)
    return [np.asarray(p.convert("RGB")) for p in pictures]


def _rgb(picture: Image.Image) -> np.ndarray:
    return np.asarray(picture.convert("RGB"))


def test_images_endpoint_serves_compact_images_through_the_transformers_path(server, reference, compact_model_dir,
                                                                              tmp_path):  # fmt: skip
    """The endpoint runs the transformers path in the API server: its PNGs equal `MedITokAR.generate_image` called
    here (greedy, greedy guided, and seeded sampling where image i uses seed + i)."""
    url = server["url"]
    greedy = _rgb(reference.generate_image(CAPTION, size=IMAGE_SIZE, temperature=0.0))
    guided = _rgb(reference.generate_image(CAPTION, size=IMAGE_SIZE, cfg_scale=CFG_SCALE, temperature=0.0))
    assert not np.array_equal(greedy, guided)  # guidance changes this model's image: the checks below tell them apart
    start = time.monotonic()
    first = _images(url, prompt=CAPTION, temperature=0)  # loads the folder into the API server, then generates
    first_s = time.monotonic() - start
    start = time.monotonic()
    pair = _images(url, prompt=CAPTION, temperature=0, n=2)
    print(f"compact images endpoint, {IMAGE_SIZE} px greedy: first request {first_s:.2f} s, then n=2 "
          f"{time.monotonic() - start:.2f} s")  # fmt: skip
    assert all(np.array_equal(image, greedy) for image in first + pair) and len(first + pair) == 3
    (image,) = _images(url, prompt=CAPTION, temperature=0, cfg_scale=CFG_SCALE)
    assert np.array_equal(image, guided)
    (image,) = _images(url, prompt=CAPTION, temperature=0, guidance_scale=CFG_SCALE)  # the alias
    assert np.array_equal(image, guided)
    # `meditok-ar generate-image --server` asks the images endpoint for a compact folder
    from meditok.ar.vllm_plugin.client import generate_image_via_server

    out = tmp_path / "client.png"
    generate_image_via_server(url, str(compact_model_dir), CAPTION, (IMAGE_SIZE, IMAGE_SIZE), str(out), temperature=0.0,
                              cfg_scale=CFG_SCALE)  # fmt: skip
    assert np.array_equal(_rgb(Image.open(out)), guided)
    sampled = _images(url, prompt=CAPTION, temperature=1.0, top_k=50, top_p=0.9, seed=7, n=2)
    for i, image in enumerate(sampled):
        expected = reference.generate_image(CAPTION, size=IMAGE_SIZE, temperature=1.0, top_k=50, top_p=0.9, seed=7 + i)
        assert np.array_equal(image, _rgb(expected)), i
    assert not np.array_equal(sampled[0], sampled[1])


def test_compact_bad_image_requests_get_one_line_400s(server, reference):
    url = f"{server['url']}/v1/images/generations"
    for bad, expected in (({"prompt": CAPTION, "size": "20x20"}, "multiple of 16"),
                          ({"prompt": CAPTION, "size": "64x64", "cfg_scale": -2.0}, "cfg_scale"),
                          ({"size": "64x64"}, "prompt"), ({"prompt": CAPTION, "size": "64x64", "n": 9}, "n must"),
                          ({"prompt": CAPTION, "size": "64x64", "seed": "x"}, "seed"),
                          ({"prompt": CAPTION, "top_k": 1e300}, "top_k"),
                          ({"prompt": CAPTION, "size": "64", "top_p": 0}, "top_p"),
                          ({"prompt": CAPTION, "response_format": "url"}, "response_format")):  # fmt: skip
        response = requests.post(url, json=bad, timeout=60)
        assert response.status_code == 400, (bad, response.text)
        message = response.json()["error"]["message"]
        assert expected in message and "\n" not in message, (bad, message)
    # completions return token ids, which cannot carry a compact image: refused at admission, pointing to the endpoint
    prompt = reference.builder.generation_prompt(CAPTION, GRID)
    body = {"model": "meditok", "prompt": prompt, "max_tokens": 20, "vllm_xargs": {"image_size": IMAGE_SIZE}}
    response = requests.post(f"{server['url']}/v1/completions", json=body, timeout=60)
    assert response.status_code == 400, response.text
    message = response.json()["error"]["message"]
    assert "\n" not in message and "layout version 2" in message and "/v1/images/generations" in message, message
    # the server keeps serving
    assert requests.get(f"{server['url']}/health", timeout=10).status_code == 200
