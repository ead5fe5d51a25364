"""Resume and export never run pickled code (issue 12, point 2), real DeepSpeed (ZeRO-1, so DeepSpeed's optimizer
files are there too) on the CPU: a clean checkpoint resumes through the allow-list; a payload in the trainer's
``rank00000_state.pt`` or in a DeepSpeed file is refused with one line naming the file, and the file the payload
would create is never created; `meditok export` gives the same line."""

import json
import shutil
import subprocess

import pytest
import torch
from train_helpers import overrides, run_train, venv_tool

STEP = "step-00000002"


class Payload:
    """Unpickling it calls open(marker, "w"): the marker exists iff the pickle ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture(scope="module")
def zero1_run(assets, tmp_path_factory):
    out = tmp_path_factory.mktemp("zero1")
    args = overrides(assets, out, "run.steps=4", "run.ckpt_every=2", "run.stop_after=2", "run.zero_stage=1")
    result = run_train("tiny-cpu-stage1.yaml", args)
    assert result.returncode == 0, result.stderr[-5000:]
    files = sorted(str(p.relative_to(out / "checkpoints" / STEP)) for p in (out / "checkpoints" / STEP).rglob("*.pt"))
    assert "rank00000_state.pt" in files and "generator/zero_pp_rank_0_mp_rank_00_optim_states.pt" in files, files
    return out


def _copy(run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(run, out)
    return out


def _poison(path, marker):
    """Keep the file's real content and add the payload under one more key."""
    state = torch.load(path, map_location="cpu", weights_only=False)
    state["extra"] = Payload(marker)
    torch.save(state, path)


def _resume(assets, out):
    args = overrides(assets, out, "run.steps=4", "run.ckpt_every=2", "run.zero_stage=1", "run.resume=auto")
    return run_train("tiny-cpu-stage1.yaml", args)


def test_clean_zero1_checkpoint_resumes(assets, zero1_run, tmp_path):
    out = _copy(zero1_run, tmp_path)
    result = _resume(assets, out)
    assert result.returncode == 0, result.stderr[-5000:]
    steps = [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]
    assert (out / "export" / "model.safetensors").is_file()


@pytest.mark.parametrize(
    "name",
    [
        "rank00000_state.pt",
        "generator/zero_pp_rank_0_mp_rank_00_optim_states.pt",
        "discriminator/mp_rank_00_model_states.pt",
    ],
)
def test_resume_refuses_a_pickled_payload(assets, zero1_run, tmp_path, name):
    out = _copy(zero1_run, tmp_path)
    target = out / "checkpoints" / STEP / name
    marker = tmp_path / "payload-ran"
    _poison(target, marker)
    log_before = (out / "log.jsonl").read_text()
    result = _resume(assets, out)
    assert result.returncode == 2, result.stderr[-5000:]
    assert not marker.exists()
    errors = [line for line in result.stderr.splitlines() if line.startswith("meditok-train: error:")]
    assert len(errors) == 1, result.stderr[-3000:]
    assert f"{target}: refused to load: it holds io.open, which is not on the allow-list" in errors[0]
    assert "Traceback" not in result.stderr
    assert (out / "log.jsonl").read_text() == log_before  # nothing trained
    assert not (out / "checkpoints" / "step-00000004").exists()


def test_export_refuses_a_pickled_payload(zero1_run, tmp_path):
    out = _copy(zero1_run, tmp_path)
    target = out / "checkpoints" / STEP / "generator" / "mp_rank_00_model_states.pt"
    marker = tmp_path / "payload-ran"
    _poison(target, marker)
    release = tmp_path / "release"
    done = subprocess.run(
        [venv_tool("meditok"), "export", str(out / "checkpoints"), str(release)], capture_output=True, text=True
    )
    assert done.returncode == 1
    assert not marker.exists()
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("meditok: error:")
    assert f"{target}: refused to load: it holds io.open, which is not on the allow-list" in lines[0]
    assert not release.exists()
