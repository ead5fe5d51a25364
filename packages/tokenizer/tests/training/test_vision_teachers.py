"""Vision teachers by config: `teacher.format` transformers (plus the built-in meditok / open_clip ViT), and the parts
of `timm` that need no timm (a missing timm is a start-up error; the config keys).

Small randomly initialised models are built with the same libraries, saved locally and loaded back through the
config path; the teacher's embedding must equal a direct forward of the same model on the same resized, normalised
input, start-up errors must name the config key and the file, and a tiny stage-1 run must train the adapters on top.
timm itself is tested in test_timm_teacher.py, in the tokenizer-timm nox session (timm needs a torchvision that
loads beside torch, which the CPU torch 2.13.0 of this session has none of).
"""

import json
import sys

import pytest
import torch
import transformers  # in the [train] extra this session installs: missing is an error, not a skip
from safetensors.torch import load_file, save_file
from train_helpers import check_teacher_run, overrides, random_images, run_train, teacher_input

from meditok.tokenizer.auxiliary import load_vision_teacher
from meditok.tokenizer.training import AuxModelError, load_config

MEAN, STD = (0.4, 0.45, 0.5), (0.2, 0.25, 0.3)
TIMM_NAME = "deit_tiny_patch16_224"


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


# ------------------------------------------------------------------------------------------------ transformers


def test_transformers_vit_embedding_is_its_pooler_output(hf_models):
    model, folder = hf_models["vit"]
    teacher = load_vision_teacher(str(folder), "transformers")
    assert (teacher.dim, teacher.image_size, teacher.pooling) == (32, (32, 32), "pooler")
    x = random_images()
    with torch.no_grad():
        expected = model(pixel_values=teacher_input(x, 32, MEAN, STD)).pooler_output
        torch.testing.assert_close(teacher(x), expected, rtol=1e-5, atol=1e-6)
        # pooling=cls: the CLS token of the last hidden state; the configured mean/std win over the folder's.
        cls = load_vision_teacher(str(folder), "transformers", pooling="cls", mean=(0.5,) * 3, std=(0.5,) * 3)
        expected_cls = model(pixel_values=teacher_input(x, 32, (0.5,) * 3, (0.5,) * 3)).last_hidden_state[:, 0]
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
    x = random_images(4)
    with torch.no_grad():
        expected = model(pixel_values=teacher_input(x, 32, MEAN, STD)).last_hidden_state[:, 0]
        torch.testing.assert_close(teacher(x), expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(AuxModelError, match="teacher.pooling: pooler, but .* holds no pooler weights"):
        load_vision_teacher(str(folder), "transformers", pooling="pooler")


def test_transformers_clip_with_projection_gives_image_embeds(hf_models):
    model, folder = hf_models["clip"]
    teacher = load_vision_teacher(str(folder), "transformers")
    assert teacher.dim == 24 and "CLIPVisionModelWithProjection" in teacher.description
    x = random_images(5, 64)
    with torch.no_grad():
        expected = model(pixel_values=teacher_input(x, 32, MEAN, STD)).image_embeds
        torch.testing.assert_close(teacher(x), expected, rtol=1e-5, atol=1e-6)
    # image_size from the config overrides the model's: the input is resized to 16 (CLIP interpolates nothing, so
    # a size its position embedding does not fit fails at start-up, naming the key).
    with pytest.raises(AuxModelError, match="teacher.path: the vision teacher from .* fails on a 16x16 input"):
        load_vision_teacher(str(folder), "transformers", image_size=16)


def test_transformers_clip_model_gives_projected_image_features(hf_models):
    model, folder = hf_models["clip_full"]  # a whole CLIP (text tower too): AutoModel -> CLIPModel
    teacher = load_vision_teacher(str(folder), "transformers")
    assert (teacher.dim, teacher.pooling) == (20, "image_features")
    x = random_images(7, 32)
    with torch.no_grad():
        pooled = model.vision_model(pixel_values=teacher_input(x, 32, MEAN, STD)).pooler_output
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
    check_teacher_run(result, out, 24)
    assert "teacher: transformers CLIPVisionModelWithProjection (image_embeds) from" in result.stderr
