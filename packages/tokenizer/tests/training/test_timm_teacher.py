"""Vision teacher `teacher.format: timm`, in its own nox session (tokenizer-timm).

timm imports torchvision, and no PyPI torchvision loads beside the CPU torch 2.13.0 the other sessions use
("operator torchvision::nms does not exist"); the tokenizer-timm session installs torch 2.14.1 + torchvision 0.29.1
(CUDA builds, run here on the CPU) and timm, so this file imports timm plainly: missing is an error, not a skip.
A small random timm model is saved locally and loaded back through the config path; the teacher's embedding must
equal a direct forward of the same model on the same resized, normalised input, start-up errors must name the config
key and the file, and a tiny stage-1 run must train the adapters on top. The checks that need no timm (a missing timm
is a start-up error, the config keys) are in test_vision_teachers.py."""

import json

import pytest
import timm
import torch
from safetensors.torch import save_file
from train_helpers import check_teacher_run, overrides, random_images, run_train, teacher_input

from meditok.tokenizer.auxiliary import load_vision_teacher
from meditok.tokenizer.training import AuxModelError

TIMM_NAME = "deit_tiny_patch16_224"  # its timm data config: ImageNet mean/std, so the normalisation is visible
TIMM_KWARGS = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # timm's data config for this model


@pytest.fixture(scope="module")
def timm_weights(tmp_path_factory):
    torch.manual_seed(1)
    # Saved with a 10-class head, as a fine-tuned checkpoint would be: the loader drops the head tensors.
    model = timm.create_model(TIMM_NAME, pretrained=False, num_classes=10, **TIMM_KWARGS).eval()
    path = tmp_path_factory.mktemp("timm") / "deit_tiny.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    model.reset_classifier(0)
    return model, path


def test_timm_embedding_is_the_pooled_feature(timm_weights):
    model, path = timm_weights
    teacher = load_vision_teacher(str(path), "timm", name=TIMM_NAME, model_kwargs=TIMM_KWARGS)
    assert teacher.dim == 32 and teacher.image_size == (32, 32)
    torch.testing.assert_close(teacher.mean.flatten(), torch.tensor(IMAGENET_MEAN))
    x = random_images(6, 40)
    with torch.no_grad():
        expected = model(teacher_input(x, 32, IMAGENET_MEAN, IMAGENET_STD))
        torch.testing.assert_close(teacher(x), expected, rtol=1e-5, atol=1e-6)
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
    check_teacher_run(result, out, 32)
    assert "teacher: timm deit_tiny_patch16_224 from" in result.stderr
