"""The AR trainer's config: typed sections, the tokenizer trainer's mechanism (YAML or dict, key=value overrides)."""

import pytest

from meditok.ar.train import ARTrainConfig, load_config

BASE = {"model": {"base": "llm", "out": "run"}, "data": {"codes": "codes"}}


def test_defaults_fill_every_section_and_yaml_overrides_are_typed(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text("model: {base: llm, out: run}\ndata: {codes: codes}\ntrain: {lr: 1e-3}\n")
    cfg = load_config(path, ["train.steps=7", "lora.target_modules=[q_proj, v_proj]", "train.deepspeed=true"])
    assert isinstance(cfg, ARTrainConfig)
    assert (cfg.train.steps, cfg.train.lr, cfg.train.deepspeed) == (7, 0.001, True)  # "1e-3": a YAML 1.1 string
    assert cfg.lora.target_modules == ["q_proj", "v_proj"]
    assert (cfg.lora.r, cfg.lora.alpha, cfg.data.cond_dropout, cfg.train.batch_size) == (8, 16, 0.1, 2)
    assert load_config(BASE).lora.target_modules == "all-linear"


def test_overrides_do_not_change_the_callers_dict():
    given = {"model": {"base": "llm", "out": "run"}, "data": {"codes": "codes"}, "train": {"steps": 3}}
    assert load_config(given, ["train.steps=5"]).train.steps == 5
    assert given["train"]["steps"] == 3


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({**BASE, "trian": {}}, r"unknown config keys \['trian'\]"),
        ({**BASE, "lora": {"rank": 4}}, r"unknown config keys \['lora.rank'\]"),
        ({**BASE, "train": {"steps": "ten"}}, "train.steps: expected an integer"),
        ({**BASE, "train": {"deepspeed": "maybe"}}, "train.deepspeed: expected true/false"),
        ({"model": {"base": "llm"}, "data": {"codes": "c"}}, "model.out is required"),
        ({"model": {"base": "llm", "out": "run"}}, "data.codes or data.records is required"),
    ],
)
def test_mistakes_name_the_key(config, message):
    with pytest.raises(ValueError, match=message):
        load_config(config)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({**BASE, "train": {"warmup": 1.0}}, "train.warmup must be a share"),
        ({**BASE, "train": {"lr_end_ratio": 1.5}}, r"train.lr_end_ratio must be in \[0, 1\]"),
        ({**BASE, "train": {"token_lr": float("nan")}}, "train.token_lr must be a finite rate"),
        ({**BASE, "train": {"loss_average": "record"}}, "train.loss_average must be token or sequence"),
        (
            {
                "model": {"base": "llm", "out": "run", "layout": "compact"},
                "data": {"codes": "c"},
                "train": {"loss_average": "sequence"},
            },
            "loss_average=sequence is implemented for the flat layout only",
        ),
    ],
)
def test_schedule_settings_are_checked(config, message):
    with pytest.raises(ValueError, match=message):
        load_config(config)


def test_the_rate_schedule_warms_up_linearly_then_follows_a_cosine_to_its_end_ratio():
    from meditok.ar.train import lr_factor

    # 10 steps, warmup 0.2 (2 steps): 1/2, 2/2, then cosine over the 8 remaining steps from 1 to 0.1.
    factors = [lr_factor(step, 10, 0.2, 0.1) for step in range(10)]
    assert factors[:2] == [0.5, 1.0]
    assert factors[2] == pytest.approx(1.0) and factors[-1] == pytest.approx(0.1)
    # halfway through the decay (step 2 + 3.5): cos(pi/2) = 0, so the factor is the mean of 1 and 0.1
    assert lr_factor(2, 10, 0.2, 0.1) > lr_factor(5, 10, 0.2, 0.1) > 0.55 > lr_factor(6, 10, 0.2, 0.1)
    assert [lr_factor(s, 10, 0.0, 1.0) for s in range(10)] == [1.0] * 10  # the default: constant


def test_sequence_averaging_weighs_each_sequence_the_same_whatever_its_label_count():
    """Expected: torch's own mean cross-entropy of each sequence alone (what Hugging Face's loss is for a batch of
    one), averaged over the sequences that have labels; the token average is the pooled mean, for contrast."""
    import torch

    from meditok.ar.train import sequence_averaged_loss

    torch.manual_seed(0)
    logits = torch.randn(3, 6, 11)
    labels = torch.full((3, 6), -100)
    labels[0, 1:6] = torch.tensor([1, 2, 3, 4, 5])  # five label tokens (after the shift: positions 1..5)
    labels[1, 4] = 7  # one label token
    # sequence 2 has none: it does not count
    per_sequence = [
        torch.nn.functional.cross_entropy(logits[i, :-1], labels[i, 1:], ignore_index=-100) for i in range(2)
    ]
    expected = (per_sequence[0] + per_sequence[1]) / 2
    assert torch.allclose(sequence_averaged_loss(logits, labels), expected, atol=1e-6)
    pooled = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)
    assert not torch.allclose(pooled, expected, atol=1e-3)  # the two averages differ on this batch
