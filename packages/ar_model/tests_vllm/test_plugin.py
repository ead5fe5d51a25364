"""No-engine tests: entry points, registration, the multimodal processor and the logits processor."""

from __future__ import annotations

import io
import json
from importlib.metadata import entry_points

import pytest
import torch
from conftest import IMAGE_SIZE
from PIL import Image

from meditok.ar.layout import ARCHITECTURE, TokenLayout, token_ids_to_codes


def test_entry_points_point_at_the_plugin():
    plugins = {e.name: e.value for e in entry_points(group="vllm.general_plugins")}
    assert plugins["meditok_ar"] == "meditok.ar.vllm_plugin:register"
    procs = {e.name: e.load() for e in entry_points(group="vllm.logits_processors")}
    from meditok.ar.vllm_plugin.logits import ImageLayoutLogitsProcessor

    assert procs["meditok_image_layout"] is ImageLayoutLogitsProcessor


def test_register_is_idempotent_and_class_satisfies_vllm():
    from vllm import ModelRegistry
    from vllm.model_executor.models.interfaces import supports_multimodal
    from vllm.model_executor.models.interfaces_base import is_text_generation_model
    from vllm.plugins import load_general_plugins

    from meditok.ar.vllm_plugin import register

    load_general_plugins()
    register()
    register()
    assert ARCHITECTURE in ModelRegistry.get_supported_archs()
    entry = ModelRegistry.models[ARCHITECTURE]
    assert (entry.module_name, entry.class_name) == ("meditok.ar.vllm_plugin.model", ARCHITECTURE)
    from meditok.ar.vllm_plugin.model import MedITokARForCausalLM as cls

    assert is_text_generation_model(cls) and supports_multimodal(cls)
    assert cls.get_placeholder_str("image", 0) == "<image>"


@pytest.fixture(scope="module")
def processor(model_dir, monkeypatch_module):
    from vllm.config import ModelConfig
    from vllm.multimodal import MULTIMODAL_REGISTRY

    from meditok.ar.vllm_plugin import register

    monkeypatch_module.setenv("MEDITOK_VLLM_IMAGE_SIZE", str(IMAGE_SIZE))
    register()
    config = ModelConfig(model=str(model_dir), dtype="float32", max_model_len=512)
    return MULTIMODAL_REGISTRY.create_processor(config), config


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def test_processor_turns_an_image_into_its_block(processor, model_dir, xray_png):
    from meditok.ar.layout import codes_to_token_ids
    from meditok.tokenizer import MedITok
    from meditok.tokenizer.preprocessing import preprocess

    proc, _ = processor
    layout = TokenLayout.from_config(json.loads((model_dir / "config.json").read_text()))
    picture = Image.open(io.BytesIO(xray_png)).convert("RGB")
    prompt = [1, 50, layout.image_token_id, 60, 61]
    result = proc(prompt, proc.info.parse_mm_data({"image": [picture]}))
    ids = result["prompt_token_ids"]
    tok = MedITok.from_pretrained(model_dir / "image_tokenizer").eval()
    with torch.no_grad():
        codes = tok.encode(preprocess(picture, size=IMAGE_SIZE))[0]
    block = codes_to_token_ids(codes, layout, (IMAGE_SIZE // 16,) * 2)
    assert ids == [1, 50, *block, 60, 61]
    assert layout.image_token_id not in ids
    decoded, grid = token_ids_to_codes(ids[2:-2], layout)
    assert grid == (4, 4) and torch.equal(torch.from_numpy(decoded), codes.long())
    # a different image gives different codes (the processor really reads the pixels)
    flipped = proc.info.parse_mm_data({"image": [picture.transpose(Image.FLIP_LEFT_RIGHT)]})
    other = proc(prompt, flipped)["prompt_token_ids"]
    assert other != ids and len(other) == len(ids)


def test_logits_processor_params():
    from meditok.ar.vllm_plugin.logits import requested_size

    assert requested_size(None) is None and requested_size({"other": 1}) is None
    assert requested_size({"image_size": 64}) == (64, 64)
    assert requested_size({"image_height": 32, "image_width": 48}) == (32, 48)
    for bad in ({"image_size": 20}, {"image_height": 32}, {"image_size": "64"}, {"image_size": 64 * 17}):
        with pytest.raises(ValueError, match="vllm_xargs"):
            requested_size(bad)
    with pytest.raises(ValueError, match="classifier-free guidance"):
        requested_size({"image_size": 64, "cfg_scale": 3.0})


def test_dicom_bytes_are_windowed_by_meditok_data(xray_dicom):
    import numpy as np

    from meditok.ar.vllm_plugin.media import dicom_to_pil, install_dicom_loader, is_dicom
    from meditok.data import normalize_intensity, read_dicom

    data = xray_dicom.read_bytes()
    assert is_dicom(data) and not is_dicom(b"\x89PNG" + bytes(200))
    picture = dicom_to_pil(data)
    expected = np.clip((normalize_intensity(read_dicom(xray_dicom)) + 1) * 127.5, 0, 255).round().astype(np.uint8)
    assert np.array_equal(np.asarray(picture)[..., 0], expected)
    install_dicom_loader()
    install_dicom_loader()  # idempotent
    from vllm.multimodal.media.image import ImageMediaIO

    loaded = ImageMediaIO().load_bytes(data)
    assert np.array_equal(np.asarray(loaded.media), np.asarray(picture))
    with pytest.raises(ValueError, match="DICOM"):
        ImageMediaIO().load_bytes(data[:400])


def test_logits_processor_masks_each_step(model_dir):
    from types import SimpleNamespace

    from vllm import SamplingParams

    from meditok.ar.vllm_plugin.logits import ImageLayoutLogitsProcessor

    config = json.loads((model_dir / "config.json").read_text())
    layout = TokenLayout.from_config(config)
    hf_config = SimpleNamespace(meditok_ar=config["meditok_ar"], eos_token_id=config["eos_token_id"])
    proc = ImageLayoutLogitsProcessor(SimpleNamespace(model_config=SimpleNamespace(hf_config=hf_config)), "cpu", False)
    assert proc.new_req_logits_processor(SamplingParams(max_tokens=4)) is None  # no xargs: no-op
    fn = proc.new_req_logits_processor(SamplingParams(max_tokens=200, extra_args={"image_size": 32}))
    header = [layout.boi_token_id, layout.height_token(2), layout.width_token(2)]

    def allowed(prompt, out):
        row = fn(prompt, out, torch.zeros(layout.vocab_size))
        ids = torch.isfinite(row).nonzero().flatten()
        return int(ids.min()), int(ids.max()) + 1

    assert allowed([1, 5] + header, []) == layout.code_token_range(0)
    assert allowed([1, 5] + header, [0] * 9) == layout.code_token_range(1)
    assert allowed([1, 5] + header, [0] * 32) == (layout.eoi_token_id, layout.eoi_token_id + 1)
    assert allowed([1, 5] + header, [0] * 33) == (config["eos_token_id"], config["eos_token_id"] + 1)
    fresh = proc.new_req_logits_processor(SamplingParams(max_tokens=200, extra_args={"image_size": 32}))
    row = fresh([1, 5], [], torch.zeros(layout.vocab_size))  # no header in the prompt: the model writes <boi> first
    assert torch.isfinite(row).nonzero().flatten().tolist() == [layout.boi_token_id]
    too_big = proc.new_req_logits_processor(SamplingParams(max_tokens=8, extra_args={"image_size": 1024}))
    assert too_big is not None  # 64 = max_grid: allowed


def test_serve_command_defaults_and_passthrough(model_dir):
    from meditok.ar.vllm_plugin.client import CHAT_TEMPLATE, serve_command

    argv, env = serve_command(str(model_dir), ["--dtype", "float32", "--port", "1234"], image_size=64)
    assert argv[1:5] == ["-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir)]
    assert argv[argv.index("--chat-template") + 1] == str(CHAT_TEMPLATE) and CHAT_TEMPLATE.exists()
    assert argv[-4:] == ["--dtype", "float32", "--port", "1234"] and "--limit-mm-per-prompt" in argv
    assert env["MEDITOK_VLLM_IMAGE_SIZE"] == "64" and "meditok_images" in env["VLLM_PLUGINS"].split(",")
    argv, _ = serve_command(str(model_dir), ["--chat-template", "mine.jinja", "--limit-mm-per-prompt", "{}"])
    assert argv.count("--chat-template") == 1 and argv.count("--limit-mm-per-prompt") == 1
