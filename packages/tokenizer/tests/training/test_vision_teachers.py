"""Vision teachers by config: `teacher.format` timm / transformers (plus the built-in meditok / open_clip ViT).

Small randomly initialised models are built with the same libraries, saved locally and loaded back through the
config path; the teacher's embedding must equal a direct forward of the same model on the same resized, normalised
input, start-up errors must name the config key and the file, and a tiny stage-1 run must train the adapters on top.
"""

import json
import math
import sys

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from train_helpers import overrides, run_train

from meditok.tokenizer.training import AuxModelError, load_config
from meditok.tokenizer.training.aux_models import load_vision_teacher

transformers = pytest.importorskip("transformers")

MEAN, STD = (0.4, 0.45, 0.5), (0.2, 0.25, 0.3)
TIMM_NAME = "deit_tiny_patch16_224"  # its timm data config: ImageNet mean/std, so the normalisation is visible
TIMM_KWARGS = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}


def _timm():
    try:
        import timm
    except Exception as exc:  # ImportError, or PyPI's CUDA torchvision failing to load beside torch+cpu
        pytest.skip(f"timm is not importable here ({type(exc).__name__}: {exc})")
    return timm


def _reference_input(x, size, mean, std):
    x = F.interpolate(x, size=(size, size), mode="nearest")
    return ((x + 1) / 2 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def _save_hf(model, folder, image_size=32, mean=MEAN, std=STD):
    model.save_pretrained(str(folder))
    if mean is not None:  # what an image processor's save_pretrained writes (the keys the loader reads)
        (folder / "preprocessor_config.json").write_text(
            json.dumps({"image_mean": list(mean), "image_std": list(std), "size": {"height": 32, "width": 32}})
        )
    return folder


def _vit_config(**extra):
    return transformers.ViTConfig(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, **extra,
    )  # fmt: skip


@pytest.fixture(scope="module")
def hf_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf_vision")
    torch.manual_seed(0)
    vit = transformers.ViTModel(_vit_config()).eval()
    vit_nopool = transformers.ViTModel(_vit_config(), add_pooling_layer=False).eval()
    clip = transformers.CLIPVisionModelWithProjection(
        transformers.CLIPVisionConfig(
            image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=64, projection_dim=24,
        )
    ).eval()  # fmt: skip
    tiny = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64}
    clip_full = transformers.CLIPModel(
        transformers.CLIPConfig(
            text_config={**tiny, "vocab_size": 99, "max_position_embeddings": 16},
            vision_config={**tiny, "image_size": 32, "patch_size": 8},
            projection_dim=20,
        )
    ).eval()
    return {
        "clip_full": (clip_full, _save_hf(clip_full, root / "clip_full")),
        "vit": (vit, _save_hf(vit, root / "vit")),
        "vit_nopool": (vit_nopool, _save_hf(vit_nopool, root / "vit_nopool")),
        "clip": (clip, _save_hf(clip, root / "clip")),
        "root": root,
    }


@pytest.fixture(scope="module")
def timm_weights(tmp_path_factory):
    timm = _timm()
    torch.manual_seed(1)
    # Saved with a 10-class head, as a fine-tuned checkpoint would be: the loader drops the head tensors.
    model = timm.create_model(TIMM_NAME, pretrained=False, num_classes=10, **TIMM_KWARGS).eval()
    path = tmp_path_factory.mktemp("timm") / "deit_tiny.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    model.reset_classifier(0)
    return model, path


def _x(seed=3, size=48):
    return torch.rand(3, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# ------------------------------------------------------------------------------------------------ transformers


def test_transformers_vit_embedding_is_its_pooler_output(hf_models):
    model, folder = hf_models["vit"]
    teacher = load_vision_teacher(str(folder), "transformers")
    assert (teacher.dim, teacher.image_size, teacher.pooling) == (32, (32, 32), "pooler")
    x = _x()
    with torch.no_grad():
        expected = model(pixel_values=_reference_input(x, 32, MEAN, STD)).pooler_output
        torch.testing.assert_close(teacher(x), expected, rtol=1e-5, atol=1e-6)
        # pooling=cls: the CLS token of the last hidden state; the configured mean/std win over the folder's.
        cls = load_vision_teacher(str(folder), "transformers", pooling="cls", mean=(0.5,) * 3, std=(0.5,) * 3)
        expected_cls = model(pixel_values=_reference_input(x, 32, (0.5,) * 3, (0.5,) * 3)).last_hidden_state[:, 0]
        torch.testing.assert_close(cls(x), expected_cls, rtol=1e-5, atol=1e-6)
        assert not torch.allclose(cls(x), teacher(x))
    # Frozen and in eval mode, whatever the caller does.
    teacher.train()
    assert not teacher.training and not teacher.model.training
    assert not any(p.requires_grad for p in teacher.parameters())


def test_transformers_vit_without_pooler_weights_uses_cls(hf_models):
    model, folder = hf_models["vit_nopool"]
    # AutoModel builds ViTModel with a pooler; its weights are not in the file, so `auto` must not use it.
    teacher = load_vision_teacher(str(folder), "transformers")
    assert teacher.pooling == "cls"
    x = _x(4)
    with torch.no_grad():
        expected = model(pixel_values=_reference_input(x, 32, MEAN, STD)).last_hidden_state[:, 0]
        torch.testing.assert_close(teacher(x), expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(AuxModelError, match="teacher.pooling: pooler, but .* holds no pooler weights"):
        load_vision_teacher(str(folder), "transformers", pooling="pooler")


def test_transformers_clip_with_projection_gives_image_embeds(hf_models):
    model, folder = hf_models["clip"]
    teacher = load_vision_teacher(str(folder), "transformers")
    assert teacher.dim == 24 and "CLIPVisionModelWithProjection" in teacher.description
    x = _x(5, 64)
    with torch.no_grad():
        expected = model(pixel_values=_reference_input(x, 32, MEAN, STD)).image_embeds
        torch.testing.assert_close(teacher(x), expected, rtol=1e-5, atol=1e-6)
    # image_size from the config overrides the model's: the input is resized to 16 (CLIP interpolates nothing, so
    # a size its position embedding does not fit fails at start-up, naming the key).
    with pytest.raises(AuxModelError, match="teacher.path: the vision teacher from .* fails on a 16x16 input"):
        load_vision_teacher(str(folder), "transformers", image_size=16)


def test_transformers_clip_model_gives_projected_image_features(hf_models):
    model, folder = hf_models["clip_full"]  # a whole CLIP (text tower too): AutoModel -> CLIPModel
    teacher = load_vision_teacher(str(folder), "transformers")
    assert (teacher.dim, teacher.pooling) == (20, "image_features")
    x = _x(7, 32)
    with torch.no_grad():
        pooled = model.vision_model(pixel_values=_reference_input(x, 32, MEAN, STD)).pooler_output
        torch.testing.assert_close(teacher(x), model.visual_projection(pooled), rtol=1e-5, atol=1e-6)


def test_transformers_start_up_errors_name_key_and_file(hf_models, tmp_path):
    import shutil

    with pytest.raises(AuxModelError, match="teacher.path: file not found: .*nowhere"):
        load_vision_teacher(str(tmp_path / "nowhere"), "transformers")
    with pytest.raises(AuxModelError, match=r"teacher.path: .* \(no config.json\)"):
        load_vision_teacher(str(tmp_path), "transformers")

    _, folder = hf_models["vit"]
    bare = tmp_path / "no_pre"
    shutil.copytree(folder, bare)
    (bare / "preprocessor_config.json").unlink()
    with pytest.raises(AuxModelError, match="teacher.mean / teacher.std: .*no_pre has no preprocessor_config.json"):
        load_vision_teacher(str(bare), "transformers")
    assert load_vision_teacher(str(bare), "transformers", mean=MEAN, std=STD).dim == 32

    cut = tmp_path / "cut"
    shutil.copytree(folder, cut)
    state = load_file(str(cut / "model.safetensors"))
    save_file({k: v for k, v in state.items() if "layer.1." not in k}, str(cut / "model.safetensors"))
    with pytest.raises(AuxModelError, match=r"teacher.path: .*cut/model.safetensors does not match .*missing"):
        load_vision_teacher(str(cut), "transformers")

    wide = tmp_path / "wide"
    shutil.copytree(folder, wide)
    config = json.loads((wide / "config.json").read_text())
    (wide / "config.json").write_text(json.dumps({**config, "hidden_size": 48, "intermediate_size": 96}))
    with pytest.raises(AuxModelError, match=r"teacher.path: .*wide"):
        load_vision_teacher(str(wide), "transformers")


# -------------------------------------------------------------------------------------------------------- timm


def test_timm_missing_package_is_a_start_up_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm -> ImportError
    weights = tmp_path / "w.safetensors"
    save_file({"x": torch.zeros(1)}, str(weights))
    with pytest.raises(AuxModelError, match=r"teacher.format 'timm' needs the timm package.*pip install timm"):
        load_vision_teacher(str(weights), "timm", name=TIMM_NAME)


def test_timm_embedding_is_the_pooled_feature(timm_weights):
    model, path = timm_weights
    teacher = load_vision_teacher(str(path), "timm", name=TIMM_NAME, model_kwargs=TIMM_KWARGS)
    assert teacher.dim == 32 and teacher.image_size == (32, 32)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # from timm's data config for this model
    torch.testing.assert_close(teacher.mean.flatten(), torch.tensor(mean))
    x = _x(6, 40)
    with torch.no_grad():
        torch.testing.assert_close(teacher(x), model(_reference_input(x, 32, mean, std)), rtol=1e-5, atol=1e-6)
    teacher.train()
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())


def test_timm_start_up_errors_name_key_and_file(timm_weights, tmp_path):
    _, path = timm_weights
    with pytest.raises(AuxModelError, match="teacher.name: timm .* has no model 'no_such_net'"):
        load_vision_teacher(str(path), "timm", name="no_such_net", model_kwargs=TIMM_KWARGS)
    with pytest.raises(AuxModelError, match=r"teacher.path: .*deit_tiny.safetensors does not match .*missing"):
        load_vision_teacher(str(path), "timm", name=TIMM_NAME, model_kwargs={**TIMM_KWARGS, "depth": 3})
    with pytest.raises(AuxModelError, match=r"teacher.path: .*deit_tiny.safetensors does not match .*shape"):
        load_vision_teacher(str(path), "timm", name=TIMM_NAME, model_kwargs={**TIMM_KWARGS, "embed_dim": 64})
    with pytest.raises(AuxModelError, match="teacher.model_kwargs: timm.create_model.*bogus"):
        load_vision_teacher(str(path), "timm", name=TIMM_NAME, model_kwargs={**TIMM_KWARGS, "bogus": 1})
    with pytest.raises(AuxModelError, match="teacher.path: file not found: .*missing.pth"):
        load_vision_teacher(str(tmp_path / "missing.pth"), "timm", name=TIMM_NAME)
    with pytest.raises(AuxModelError, match="teacher.path: .* is a directory without model.safetensors"):
        load_vision_teacher(str(tmp_path), "timm", name=TIMM_NAME)


# ------------------------------------------------------------------------------------------------------ config


def test_vision_teacher_config_keys():
    cfg = load_config(
        None,
        [
            "teacher.kind=vision",
            "teacher.format=timm",
            f"teacher.name={TIMM_NAME}",
            "teacher.model_kwargs={img_size: 32, depth: 2}",
            "teacher.mean=[0.5, 0.5, 0.5]",
            "teacher.std=[0.5, 0.5, 0.5]",
        ],
    )
    assert cfg.teacher.model_kwargs == {"img_size": 32, "depth": 2} and cfg.teacher.mean == (0.5, 0.5, 0.5)
    with pytest.raises(ValueError, match="teacher.name: format timm needs a timm model name"):
        load_config(None, ["teacher.kind=vision", "teacher.format=timm"])
    with pytest.raises(ValueError, match="teacher.mean and teacher.std: set both"):
        load_config(None, ["teacher.kind=vision", "teacher.mean=[0.5, 0.5, 0.5]"])
    with pytest.raises(ValueError, match="teacher.model_kwargs: expected a mapping"):
        load_config(None, ["teacher.model_kwargs=[1, 2]"])
    with pytest.raises(ValueError, match="teacher.pooling must be auto, pooler or cls"):
        load_config(None, ["teacher.pooling=mean"])
    with pytest.raises(ValueError, match="must be one of .*'timm', 'transformers'"):
        load_config(None, ["teacher.kind=vision", "teacher.format=keras"])


# ------------------------------------------------------------------------------------------------ training runs


def _adapters(out, step):
    ckpt = out / "checkpoints" / f"step-{step:08d}" / "generator" / "mp_rank_00_model_states.pt"
    state = torch.load(ckpt, map_location="cpu", weights_only=False)["module"]
    return {k: v for k, v in state.items() if k.startswith("text_")}


def _check_run(result, out, teacher_dim):
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3]
    for r in records:
        assert math.isfinite(r["loss"]) and math.isfinite(r["clip"]) and r["clip"] > 0
    first, last = _adapters(out, 1), _adapters(out, 3)
    assert first["text_projection.weight"].shape[1] == teacher_dim  # sized by the teacher's output width
    for key in ("text_fc_norm.weight", "text_fc_norm.bias", "text_projection.weight", "text_projection.bias"):
        assert not torch.equal(first[key], last[key]), key  # the adapters train on the teacher's features


def test_stage1_trains_with_a_transformers_teacher(assets, hf_models, tmp_path):
    out = tmp_path / "run"
    _, folder = hf_models["clip"]
    args = overrides(
        assets,
        out,
        "teacher.format=transformers",
        f"teacher.path={folder}",
        "run.steps=3",
        "run.ckpt_every=1",
        "run.keep_last=3",
    )
    result = run_train("tiny-cpu-stage1.yaml", args)
    _check_run(result, out, 24)
    assert "teacher: transformers CLIPVisionModelWithProjection (image_embeds) from" in result.stderr


def test_stage1_trains_with_a_timm_teacher(assets, timm_weights, tmp_path):
    out = tmp_path / "run"
    _, path = timm_weights
    args = overrides(
        assets,
        out,
        "teacher.format=timm",
        f"teacher.path={path}",
        f"teacher.name={TIMM_NAME}",
        "teacher.model_kwargs=" + json.dumps(TIMM_KWARGS),
        "run.steps=3",
        "run.ckpt_every=1",
        "run.keep_last=3",
    )
    result = run_train("tiny-cpu-stage1.yaml", args)
    _check_run(result, out, 32)
    assert "teacher: timm deit_tiny_patch16_224 from" in result.stderr
