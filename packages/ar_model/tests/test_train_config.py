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
