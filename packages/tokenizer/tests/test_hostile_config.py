"""Hostile tokenizer config.json and weights (issue 12, point 5): every size is checked before anything is built,
with one error naming the file and the key; a bare safetensors file with one mis-shaped tensor names that tensor
only."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import save_file

from meditok.tokenizer import MedITok
from meditok.tokenizer.checkpoint import CheckpointError
from meditok.tokenizer.config import MAX_DEPTH, MAX_WIDTH, MedITokConfig


@pytest.fixture(scope="module")
def release(tiny, tmp_path_factory):
    return tiny.save_pretrained(tmp_path_factory.mktemp("release") / "tiny")


HOSTILE = [
    ("encoder_depth", 1e9, "encoder_depth must be an integer, got 1000000000.0"),
    ("encoder_depth", 10**9, f"encoder_depth must be between 1 and {MAX_DEPTH}, got 1000000000"),
    ("decoder_depth", 0, f"decoder_depth must be between 1 and {MAX_DEPTH}, got 0"),
    ("width", -128, f"width must be between 1 and {MAX_WIDTH}, got -128"),
    ("num_heads", 0, f"num_heads must be between 1 and {MAX_WIDTH}, got 0"),
    ("num_heads", 3, "width 128 is not divisible by num_heads 3"),
    ("mlp_ratio", float("nan"), "mlp_ratio must be a finite number in (0, 16], got nan"),
    ("conv_expand_ratio", float("inf"), "conv_expand_ratio must be a finite number in (0, 16], got inf"),
    ("stage_widths", [16, 32, 64], "stage_widths must be a list of 2 integers, got (16, 32, 64)"),
    ("stage_depths", [1], "stage_depths must be a list of 2 integers, got (1,)"),
    ("decoder_conv_depths", [1, -1], "decoder_conv_depths must hold 2 integers between 1 and 64, got [1, -1]"),
    ("codebook_size", 10**12, "codebook_size must be between 1 and 1048576, got 1000000000000"),
    ("latent_dim", "64", "latent_dim must be an integer, got '64'"),
    ("num_codebooks", True, "num_codebooks must be an integer, got True"),
    ("commitment_beta", float("nan"), "commitment_beta must be a finite number in [0, 1000], got nan"),
]


@pytest.mark.parametrize(("key", "value", "expected"), HOSTILE, ids=[f"{k}={v!r}" for k, v, _ in HOSTILE])
def test_hostile_config_json_names_file_and_key(release, tmp_path, key, value, expected):
    target = tmp_path / "release"
    target.mkdir()
    (target / "model.safetensors").symlink_to(release / "model.safetensors")
    data = json.loads((release / "config.json").read_text())
    assert key in data["model"]
    data["model"][key] = value
    (target / "config.json").write_text(json.dumps(data))  # NaN / Infinity as Python's json writes them
    start = time.perf_counter()
    with pytest.raises(CheckpointError) as info:
        MedITok.from_pretrained(target)
    assert time.perf_counter() - start < 5  # refused before building (1e9 blocks took minutes and GBs)
    message = str(info.value)
    assert message.startswith(f"{target / 'config.json'}: not a MedITok config"), message
    assert expected in message, message
    assert "\n" not in message


def test_hostile_config_json_through_the_cli(release, tmp_path):
    target = tmp_path / "release"
    target.mkdir()
    (target / "model.safetensors").symlink_to(release / "model.safetensors")
    data = json.loads((release / "config.json").read_text())
    data["model"]["encoder_depth"] = 1e9
    (target / "config.json").write_text(json.dumps(data))
    done = subprocess.run(
        [sys.executable, "-m", "meditok.tokenizer.cli", "info", str(target)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("meditok: error:"), done.stderr
    assert str(target / "config.json") in lines[0] and "encoder_depth must be an integer" in lines[0]


def test_every_preset_passes_the_checks():
    from meditok.tokenizer.config import CONFIGS

    for name, config in CONFIGS.items():
        assert MedITokConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config, name


@pytest.mark.parametrize(
    "key",
    [
        "encoder.norm.weight",  # read by the shape inference (width)
        "quantizer.codebooks.0.codebook.weight",  # read by the inference (codebook size, code dim)
        "encoder.blocks.0.mlp.w0.weight",  # read by the inference (mlp ratio)
        "decoder.blocks.1.attn.qkv.weight",  # not read by it
    ],
)
def test_bare_safetensors_with_one_misshaped_tensor_names_that_tensor_only(tiny, tmp_path, key):
    state = {k: v.detach().clone().contiguous() for k, v in tiny.state_dict().items()}
    assert key in state
    good_shape = tuple(state[key].shape)
    state[key] = torch.zeros(3, 5)
    path = tmp_path / "bare.safetensors"
    save_file(state, path)
    with pytest.raises(CheckpointError) as info:
        MedITok.from_pretrained(path)
    message = str(info.value)
    assert message == (
        f"{path}: does not match the MedITok architecture: 1 shape mismatches: "
        f"{key}: checkpoint (3, 5) vs model {good_shape}"
    )


def test_bare_safetensors_of_each_preset_still_loads(tiny, tmp_path):
    path = tmp_path / "bare.safetensors"
    save_file({k: v.detach().clone().contiguous() for k, v in tiny.state_dict().items()}, path)
    loaded = MedITok.from_pretrained(path)
    assert loaded.config == tiny.config
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    assert torch.equal(loaded.encode(x), tiny.encode(x))


def test_export_names_the_trainer_state_and_key(tiny, tmp_path):
    """A training checkpoint whose trainer_state.json records a hostile model_config: `meditok export` refuses it in
    one line naming the file and the key (the module file holds the real tiny weights)."""
    ckpt = tmp_path / "step-00000001"
    (ckpt / "generator").mkdir(parents=True)
    module = {f"core.{k}": v.detach().clone() for k, v in tiny.state_dict().items()}
    torch.save({"module": module}, ckpt / "generator" / "mp_rank_00_model_states.pt")
    config = {**tiny.config.to_dict(), "encoder_depth": 1e9}
    (ckpt / "trainer_state.json").write_text(json.dumps({"step": 1, "stage": 1, "model_config": config}))
    out = tmp_path / "release"
    done = subprocess.run(
        [sys.executable, "-m", "meditok.tokenizer.cli", "export", str(ckpt), str(out)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"meditok: error: {ckpt / 'trainer_state.json'}: model_config: ")
    assert "encoder_depth must be an integer, got 1000000000.0" in lines[0]
    assert not out.exists()
