"""format: hf_bert — BiomedCLIP's text tower (HF BERT + CLS of the last hidden state + MLP projection) from local
files, checked against a by-hand forward of the same tiny random BERT; start-up errors name the file."""

import json
import shutil

import pytest
import torch
import transformers  # in the [train] extra this session installs: missing is an error, not a skip
from torch import nn

from meditok.tokenizer.auxiliary import OPEN_CLIP_FILE, load_text_tower
from meditok.tokenizer.training import AuxModelError
from meditok.tokenizer.training.testing import make_hf_text_standin


@pytest.fixture(scope="module")
def standin(tmp_path_factory):
    return make_hf_text_standin(tmp_path_factory.mktemp("hf") / "bert")


def test_matches_open_clip_hf_text_encoder_by_hand(standin):
    tower = load_text_tower(standin["folder"], "hf_bert", checkpoint=standin["checkpoint"], context_length=16)
    assert tower.config.output_dim == 48 and tower.config.proj == "mlp" and not tower.training
    assert not any(p.requires_grad for p in tower.parameters())
    texts = ["A chest x-ray image", "an axial CT slice of the liver"]
    ids = tower.tokenize(texts)
    assert ids.shape == (2, 16) and ids[0, 0] == 2 and (ids == 1).sum() == 0  # [CLS] first, no [UNK]

    state = torch.load(standin["checkpoint"], weights_only=True)
    bert = transformers.BertModel(
        transformers.BertConfig.from_pretrained(standin["folder"]), add_pooling_layer=False
    ).eval()
    bert.load_state_dict({k[17:]: v for k, v in state.items() if k.startswith("text.transformer.")})
    proj = nn.Sequential(nn.Linear(32, 40, bias=False), nn.GELU(), nn.Linear(40, 48, bias=False))
    proj.load_state_dict({"0.weight": state["text.proj.0.weight"], "2.weight": state["text.proj.2.weight"]})
    with torch.no_grad():
        expected = proj(bert(input_ids=ids, attention_mask=(ids != 0).long()).last_hidden_state[:, 0])
        got = tower.encode_text(texts)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    # The default checkpoint is BiomedCLIP's file inside the folder.
    again = load_text_tower(standin["folder"], "hf_bert", context_length=16)
    with torch.no_grad():
        torch.testing.assert_close(again.encode_text(texts), expected, rtol=1e-5, atol=1e-6)


def test_start_up_errors_name_the_problem(standin, tmp_path):
    with pytest.raises(AuxModelError, match="teacher.path: file not found: .*nowhere"):
        load_text_tower(str(tmp_path / "nowhere"), "hf_bert")
    with pytest.raises(AuxModelError, match="no config.json"):
        load_text_tower(str(tmp_path), "hf_bert")
    with pytest.raises(AuxModelError, match="unknown text tower format 'bert'"):
        load_text_tower(standin["folder"], "bert")
    with pytest.raises(AuxModelError, match="context_length 512 exceeds max_position_embeddings 64"):
        load_text_tower(standin["folder"], "hf_bert", context_length=512)

    folder = tmp_path / "bert"
    shutil.copytree(standin["folder"], folder)
    state = torch.load(folder / OPEN_CLIP_FILE, weights_only=True)
    torch.save({k: v for k, v in state.items() if not k.startswith("text.proj.")}, folder / OPEN_CLIP_FILE)
    with pytest.raises(AuxModelError, match="teacher.checkpoint: .* has no text projection"):
        load_text_tower(str(folder), "hf_bert", context_length=16)
    (folder / OPEN_CLIP_FILE).unlink()
    with pytest.raises(AuxModelError, match="teacher.checkpoint: not set"):
        load_text_tower(str(folder), "hf_bert", context_length=16)
    with pytest.raises(AuxModelError, match="teacher.checkpoint: file not found"):
        load_text_tower(str(folder), "hf_bert", checkpoint=str(tmp_path / "missing.bin"), context_length=16)

    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "hidden_size": 16, "intermediate_size": 32}))
    with pytest.raises(AuxModelError, match="does not match the expected network: .*shape mismatch"):
        load_text_tower(str(folder), "hf_bert", checkpoint=standin["checkpoint"], context_length=16)
