import math

import pytest
import torch
from torch import nn
from train_helpers import CONFIGS

from meditok.tokenizer.auxiliary import VGG16LPIPS, ViT, ViTConfig, load_lpips, load_vision_teacher, save_aux
from meditok.tokenizer.training import AuxModelError, load_config, lr_factor, param_groups
from meditok.tokenizer.training.config import TrainConfig
from meditok.tokenizer.training.losses import adaptive_weight, clip_loss, disc_schedules, hinge_d_loss


def test_yaml_and_overrides_typed():
    cfg = load_config(CONFIGS / "tiny-cpu-stage1.yaml", ["optim.lr=1e-3", "run.steps=7", "optim.betas=[0.8, 0.9]"])
    assert cfg.optim.lr == 1e-3 and cfg.run.steps == 7 and cfg.optim.betas == (0.8, 0.9)
    assert cfg.stage == 1 and cfg.teacher.kind == "vision" and cfg.data.ct_windowing
    with pytest.raises(ValueError, match="unknown config keys"):
        load_config(None, ["optim.lrr=1"])
    with pytest.raises(ValueError, match="expected an integer"):
        load_config(None, ["run.steps=1.5"])


def test_full_size_configs_match_recipe():
    s1, s2 = load_config(CONFIGS / "stage1.yaml"), load_config(CONFIGS / "stage2.yaml")
    assert (s1.loss.l1, s1.loss.l2, s1.teacher.weight, s2.teacher.weight) == (0.2, 1.0, 0.1, 1.0)
    assert s1.optim.betas == (0.9, 0.95) and s1.optim.disc_betas == (0.5, 0.9)
    assert (s1.optim.lr, s1.optim.disc_lr, s1.optim.weight_decay, s1.optim.disc_weight_decay) == (5e-4, 2e-5, 0.02, 0.2)
    assert s1.data.ct_windowing and not s2.data.ct_windowing and s1.model.config == "meditok-l"


def test_full_size_model_builds_on_meta():
    from meditok.tokenizer import MedITok
    from meditok.tokenizer.config import get_config

    cfg = load_config(CONFIGS / "stage1.yaml")
    with torch.device("meta"):
        model = MedITok(get_config(cfg.model.config))
    assert sum(p.numel() for p in model.parameters()) == 696_648_388


def test_schedule_values():
    assert lr_factor(0, 10, 110) == 0.0 and lr_factor(5, 10, 110) == 0.5
    assert lr_factor(10, 10, 110) == pytest.approx(1.0)
    assert lr_factor(60, 10, 110) == pytest.approx(0.55)  # halfway through the cosine: (1 + 0.1) / 2
    assert lr_factor(110, 10, 110) == pytest.approx(0.1)
    assert disc_schedules(4, 5, 10) == (0.0, 1.0) and disc_schedules(10, 5, 10) == (0.5, 0.75)


def test_no_weight_decay_groups():
    m = nn.Module()
    m.lin = nn.Linear(4, 4)
    m.ln = nn.LayerNorm(4)
    m.norm_proj = nn.Linear(4, 4)
    m.logit_scale = nn.Parameter(torch.zeros(()))
    m.conv = nn.Conv2d(2, 2, 3)
    decay, nodecay = param_groups(m, 0.02)
    ids = lambda g: {id(p) for p in g["params"]}  # noqa: E731
    assert ids(decay) == {id(m.lin.weight), id(m.conv.weight)} and decay["weight_decay"] == 0.02
    assert id(m.logit_scale) in ids(nodecay) and id(m.norm_proj.weight) in ids(nodecay) and nodecay["weight_decay"] == 0


def test_hinge_by_hand():
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.0])
    # relu(1-real) = [0, .5] -> .25 ; relu(1+fake) = [0, 1] -> .5 ; halved sum = .375
    assert float(hinge_d_loss(real, fake)) == pytest.approx(0.375)


def test_clip_loss_by_hand():
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    txt = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    s = torch.tensor(2.0)
    li = s * img @ txt.T
    expected_i = (-torch.log_softmax(li, 1).diagonal()).mean()
    expected_t = (-torch.log_softmax(li.T, 1).diagonal()).mean()
    assert float(clip_loss(img, txt, s)) == pytest.approx(float((expected_i + expected_t) / 2), rel=1e-6)


def test_adaptive_weight_by_hand():
    w = torch.tensor([1.0, 2.0], requires_grad=True)
    nll = (3 * w).sum()  # grad [3,3] -> norm 3*sqrt2
    g = (w**2).sum()  # grad [2,4] -> norm sqrt20
    value = adaptive_weight(nll, g, w)
    assert float(value) == pytest.approx(3 * math.sqrt(2) / (math.sqrt(20) + 1e-6), rel=1e-6)
    assert float(adaptive_weight((1e-9 * w).sum(), g, w)) == pytest.approx(0.015)  # clamped from below
    assert not value.requires_grad


def test_lpips_is_zero_on_identical_and_positive_otherwise(tmp_path):
    from meditok.tokenizer.training.testing import _nonnegative_heads

    save_aux(_nonnegative_heads(VGG16LPIPS(16)), tmp_path / "lp")
    net = load_lpips(str(tmp_path / "lp"), 16)
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    assert float(net(x, x)) == pytest.approx(0.0, abs=1e-7)
    assert float(net(x, -x)) > 0


def test_missing_or_mismatched_aux_file_names_it(tmp_path):
    with pytest.raises(AuxModelError, match="teacher.path: file not found: .*nowhere"):
        load_vision_teacher(str(tmp_path / "nowhere"))
    save_aux(ViT(ViTConfig(image_size=32, patch_size=16, width=32, depth=1, num_heads=2)), tmp_path / "vit")
    with pytest.raises(AuxModelError, match="holds a 'vit' network"):
        load_lpips(str(tmp_path / "vit"), 8)
    save_aux(VGG16LPIPS(16), tmp_path / "lp16")
    with pytest.raises(AuxModelError, match="width_divisor 16, config says 8"):
        load_lpips(str(tmp_path / "lp16"), 8)
    torch.save({"net.slice1.0.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(AuxModelError, match="does not match"):
        load_lpips(str(tmp_path / "bad.pth"), 8)


def test_defaults_validate():
    assert TrainConfig().validate().optim.lr_end_ratio == 0.1
