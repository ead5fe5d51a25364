import json
import os
import pickle
import random

import pytest
import torch

from meditok.tokenizer import CheckpointError, MedITok


def _same_outputs(a: MedITok, b: MedITok, images: torch.Tensor) -> None:
    codes = a.encode(images)
    assert torch.equal(codes, b.encode(images))
    assert torch.equal(a.decode(codes), b.decode(codes))
    assert torch.equal(a.embed_image(images), b.embed_image(images))
    assert torch.equal(a.features(images), b.features(images))


@pytest.mark.parametrize("kind", ["bare", "training", "directory"])
def test_each_format_loads_strictly_with_identical_outputs(tiny, tiny_weights, images, kind):
    loaded = MedITok.from_pretrained(tiny_weights[kind])
    assert loaded.config == tiny.config
    assert loaded.state_dict().keys() == tiny.state_dict().keys()
    for key, value in tiny.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    _same_outputs(tiny, loaded, images)


def test_save_pretrained_roundtrip_writes_config_and_safetensors(tmp_path, images):
    model = MedITok.from_config("small", seed=5)
    out = model.save_pretrained(tmp_path / "small")
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "meditok" and config["model"]["width"] == 256
    _same_outputs(model, MedITok.from_pretrained(out), images)


def test_legacy_pickle_format_and_safetensors_file_load(tmp_path, tiny, images):
    legacy = tmp_path / "legacy.pth"
    torch.save(tiny.state_dict(), legacy, _use_new_zipfile_serialization=False)
    _same_outputs(tiny, MedITok.from_pretrained(legacy), images)
    from safetensors.torch import save_file

    single = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in tiny.state_dict().items()}, single)
    _same_outputs(tiny, MedITok.from_pretrained(single), images)


def test_ddp_prefixed_state_dict_loads(tmp_path, tiny, images):
    path = tmp_path / "ddp.pth"
    torch.save({"model": {f"module.{k}": v for k, v in tiny.state_dict().items()}}, path)
    _same_outputs(tiny, MedITok.from_pretrained(path), images)


def test_missing_and_unexpected_keys_are_listed(tmp_path, tiny):
    state = dict(tiny.state_dict())
    del state["decoder.norm.weight"]
    state["extra.head.weight"] = torch.zeros(3)
    path = tmp_path / "broken.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as info:
        MedITok.from_pretrained(path, config="tiny")
    message = str(info.value)
    assert str(path) in message
    assert "1 missing keys: decoder.norm.weight" in message
    assert "1 unexpected keys: extra.head.weight" in message


def test_shape_mismatch_against_requested_config(tiny_weights):
    with pytest.raises(
        CheckpointError, match=r"shape mismatches: encoder.pos_embed: checkpoint \(1, 1, 128\) vs model \(1, 1, 256\)"
    ):
        MedITok.from_pretrained(tiny_weights["bare"], config="small")


@pytest.mark.parametrize(
    "content", [b"hello, not a checkpoint\n", random.Random(0).randbytes(2048), b"PK\x03\x04garbage"]
)
def test_file_that_is_not_a_checkpoint(tmp_path, content):
    path = tmp_path / "weights.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=f"{path}: not a PyTorch checkpoint"):
        MedITok.from_pretrained(path)


def test_corrupt_pickle_is_refused_without_unpickling(tmp_path):
    path = tmp_path / "corrupt.pth"
    path.write_bytes(b"\x80\x02garbage")
    with pytest.raises(CheckpointError, match=f"{path}: refused to load.*Unsupported operand"):
        MedITok.from_pretrained(path)


def test_missing_file_and_incomplete_directory(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        MedITok.from_pretrained(tmp_path / "absent.pth")
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match=r"missing \['model.safetensors'\]"):
        MedITok.from_pretrained(tmp_path / "dir")


def test_non_tensor_payload_is_rejected(tmp_path):
    path = tmp_path / "list.pth"
    torch.save([1, 2, 3], path)
    with pytest.raises(CheckpointError, match="expected a state dict"):
        MedITok.from_pretrained(path)


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_carrying_code_is_refused_and_never_runs(tmp_path, tiny):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    state = dict(tiny.state_dict())
    state["payload"] = _Payload(marker)
    with open(path, "wb") as f:
        torch.save(state, f, pickle_protocol=pickle.HIGHEST_PROTOCOL)
    with pytest.raises(CheckpointError, match=r"refused to load.*could execute code"):
        MedITok.from_pretrained(path)
    assert not marker.exists()
