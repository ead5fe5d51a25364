"""Non-finite training (issue 12, point 1), real DeepSpeed on the CPU: a batch holding one NaN pixel is a skipped,
counted step that changes no weight; `run.max_nonfinite_steps` in a row stop the run with one line; a weight made
infinite by an update stops the run before the checkpoint is written; `meditok export` refuses a checkpoint
holding NaN, naming the file. (The NaN *file* never reaches the trainer: tests/test_datasets.py in meditok-data.)"""

import json
import os
import subprocess
import sys

import pytest
import torch
from train_helpers import CONFIGS, overrides, venv_tool

# The trainer's own entry point, with one NaN pixel put into the batches of the steps in NAN_STEPS (a data path
# that let a NaN through: the trainer must not rely on the datasets' check alone; NAN_RANK: on that rank only),
# GRAD_NAN_STEPS (a NaN gradient under a finite loss) and POISON_STEP (an inf weight after that step).
NAN_BATCHES = """
import os
import sys
import torch
from meditok.tokenizer.training import trainer as T
nan_steps = {int(s) for s in os.environ.get("NAN_STEPS", "").split(",") if s}
original = T.Trainer._next_batch
def next_batch(self):
    batch = original(self)
    if self.step + 1 in nan_steps and str(self.rank) == os.environ.get("NAN_RANK", str(self.rank)):
        image = batch["image"].clone()
        image[0, 0, 0, 0] = float("nan")
        batch = {**batch, "image": image}
    return batch
T.Trainer._next_batch = next_batch
poison_step = int(os.environ.get("POISON_STEP", "0"))
grad_nan_steps = {int(s) for s in os.environ.get("GRAD_NAN_STEPS", "").split(",") if s}
original_step = T.Trainer.train_step
def train_step(self, batch):
    if self.step + 1 in grad_nan_steps:  # a finite loss whose gradient is NaN in one parameter
        weight = self.gen_engine.module.core.decoder.last_layer_weight()
        hook = weight.register_hook(lambda g: g * float("nan"))
        try:
            return original_step(self, batch)
        finally:
            hook.remove()
    logs = original_step(self, batch)
    if self.step == poison_step:  # an update that overflowed: one weight becomes inf after a finite step
        with torch.no_grad():
            self.gen_engine.module.core.decoder.last_layer_weight().view(-1)[0] = float("inf")
    return logs
T.Trainer.train_step = train_step
sys.exit(T.main(sys.argv[1:]))
"""


def _run(nan_steps, args, timeout=300, env=None):
    cmd = [sys.executable, "-c", NAN_BATCHES, "--config", str(CONFIGS / "tiny-cpu-stage1.yaml")]
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "NAN_STEPS": ",".join(map(str, nan_steps)), **(env or {})}
    return subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=timeout, env=env)


def _module(out, step):
    path = out / "checkpoints" / f"step-{step:08d}" / "generator" / "mp_rank_00_model_states.pt"
    return torch.load(path, map_location="cpu", weights_only=True)["module"]


def _error_lines(stderr):
    return [line for line in stderr.splitlines() if line.startswith("meditok-train: error:")]


def test_one_nan_batch_is_a_skipped_counted_step(assets, tmp_path):
    out = tmp_path / "run"
    args = overrides(assets, out, "run.steps=3", "run.ckpt_every=1", "run.keep_last=0", "optim.warmup=0")
    result = _run([2], args)
    assert result.returncode == 0, result.stderr[-5000:]
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3]
    assert records[1]["nonfinite_skipped"] == "loss" and "loss" not in records[1]
    assert [r["nonfinite_steps"] for r in records] == [0, 1, 1]
    assert "nonfinite_skipped" not in records[0] and "nonfinite_skipped" not in records[2]
    assert "step 2: non-finite loss, step skipped" in result.stderr
    # The skipped step applied nothing: every parameter of checkpoint 2 equals checkpoint 1's; step 3 trained on.
    one, two, three = _module(out, 1), _module(out, 2), _module(out, 3)
    params = [k for k in one if k.endswith("weight")]
    assert len(params) > 20
    for k in params:
        assert torch.equal(one[k], two[k]), k
    assert any(not torch.equal(two[k], three[k]) for k in params)
    for state in (one, two, three):
        assert all(bool(torch.isfinite(v).all()) for v in state.values() if v.is_floating_point())
    from safetensors.torch import load_file

    exported = load_file(out / "export" / "model.safetensors")
    assert all(bool(torch.isfinite(v).all()) for v in exported.values())


@pytest.mark.parametrize("zero_stage", [0, 1])
def test_nonfinite_gradients_are_a_skipped_step(assets, tmp_path, zero_stage):
    """ZeRO-0: the trainer's total gradient norm; ZeRO-1: DeepSpeed's overflow check; both skip and count."""
    out = tmp_path / "run"
    args = overrides(assets, out, "run.steps=3", "run.ckpt_every=1", "run.keep_last=0", f"run.zero_stage={zero_stage}")
    result = _run([], args, env={"GRAD_NAN_STEPS": "2"})
    assert result.returncode == 0, result.stderr[-5000:]
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [(r["step"], r.get("nonfinite_skipped"), r["nonfinite_steps"]) for r in records] == [
        (1, None, 0),
        (2, "gradients", 1),
        (3, None, 1),
    ]
    one, two = _module(out, 1), _module(out, 2)
    assert all(torch.equal(one[k], two[k]) for k in one if k.endswith("weight"))


def test_two_ranks_skip_together(assets, tmp_path):
    """A NaN batch on rank 1 only: both ranks skip the step (rank 0's finite loss included), so the replicas stay
    equal and rank 0's log records the skip."""
    script = tmp_path / "nan_train.py"
    script.write_text(NAN_BATCHES)
    out = tmp_path / "run"
    args = overrides(assets, out, "run.steps=3", "run.ckpt_every=1", "run.keep_last=0", "data.batch_size=2")
    cmd = [venv_tool("deepspeed"), "--num_gpus", "2", "--master_port", "29647", str(script)]
    cmd += ["--config", str(CONFIGS / "tiny-cpu-stage1.yaml"), *args]
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "NAN_STEPS": "2", "NAN_RANK": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [(r["step"], r.get("nonfinite_skipped")) for r in records] == [(1, None), (2, "loss"), (3, None)]
    one, two = _module(out, 1), _module(out, 2)
    assert all(torch.equal(one[k], two[k]) for k in one if k.endswith("weight"))


def test_nonfinite_steps_in_a_row_stop_the_run(assets, tmp_path):
    out = tmp_path / "run"
    args = overrides(assets, out, "run.steps=6", "run.ckpt_every=1", "run.keep_last=0", "run.max_nonfinite_steps=2")
    result = _run([2, 3, 4, 5, 6], args)
    assert result.returncode == 2, result.stderr[-5000:]
    errors = _error_lines(result.stderr)
    assert len(errors) == 1 and "2 training steps in a row had a non-finite loss" in errors[0], result.stderr[-3000:]
    assert "run.max_nonfinite_steps=2" in errors[0]
    assert "Traceback" not in result.stderr
    ckpts = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert ckpts == ["latest", "step-00000001", "step-00000002"]  # stopped at step 3, before its checkpoint
    assert not (out / "export").exists()


def test_infinite_weights_are_never_checkpointed(assets, tmp_path):
    out = tmp_path / "run"
    args = overrides(assets, out, "run.steps=4", "run.ckpt_every=1", "run.keep_last=0")
    result = _run([], args, env={"POISON_STEP": "2"})
    assert result.returncode == 2, result.stderr[-5000:]
    errors = _error_lines(result.stderr)
    assert len(errors) == 1, result.stderr[-3000:]
    assert "step 2: not saving a checkpoint: the weights hold NaN/inf (core.decoder." in errors[0], errors
    assert "Traceback" not in result.stderr
    # Step 1's checkpoint stays the latest; nothing of step 2 (no .tmp- folder either); no export.
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["latest", "step-00000001"]
    assert (out / "checkpoints" / "latest").read_text().strip() == "step-00000001"
    assert not (out / "export").exists()


def test_export_refuses_nonfinite_weights(assets, tmp_path):
    out = tmp_path / "run"
    result = _run([], overrides(assets, out, "run.steps=1", "run.ckpt_every=1"))
    assert result.returncode == 0, result.stderr[-5000:]
    ckpt = out / "checkpoints" / "step-00000001"
    path = ckpt / "generator" / "mp_rank_00_model_states.pt"
    state = torch.load(path, map_location="cpu", weights_only=True)
    key = next(k for k in state["module"] if k.startswith("core.") and k.endswith("weight"))
    state["module"][key][0] = float("nan")
    torch.save(state, path)
    release = tmp_path / "release"
    done = subprocess.run(
        [venv_tool("meditok"), "export", str(ckpt), str(release)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("meditok: error:"), done.stderr
    assert str(path) in lines[0] and "NaN/inf" in lines[0] and key[len("core.") :] in lines[0]
    assert not release.exists()
