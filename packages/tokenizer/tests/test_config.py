import pytest
import torch
from reference_weights import key_shapes

from meditok.tokenizer import CONFIGS, MedITok, MedITokConfig, get_config, infer_config


def test_full_config_matches_published_keys_shapes_and_order():
    with torch.device("meta"):
        model = MedITok(get_config("meditok-l"))
    ours = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    assert ours == list(key_shapes().items())
    assert model.num_parameters() == 696_648_388
    buffers = [k for k, _ in model.named_buffers()]
    assert len(buffers) == 10 and sum(k.endswith("vocab_usage") for k in buffers) == 8


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_infer_config_recovers_each_preset_from_shapes(name):
    with torch.device("meta"):
        model = MedITok(get_config(name))
    assert infer_config(model.state_dict()) == CONFIGS[name]


def test_config_roundtrip_and_validation():
    cfg = CONFIGS["small"]
    assert MedITokConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="not divisible by num_heads"):
        MedITokConfig(width=100, num_heads=16)
    with pytest.raises(ValueError, match="unknown MedITokConfig fields"):
        MedITokConfig.from_dict({"widht": 3})
    with pytest.raises(ValueError, match="unknown MedITok config 'huge'"):
        get_config("huge")


def test_all_presets_share_the_code_layout():
    # Codes from any preset fit the same 8 x 4096 token layout used downstream.
    assert {(c.num_codebooks, c.codebook_size, c.latent_dim) for c in CONFIGS.values()} == {(8, 4096, 64)}
