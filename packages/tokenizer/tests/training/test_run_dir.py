"""The run directory under hostile conditions (issue 12, point 3), real DeepSpeed on the CPU: a read-only output_dir
is a start-up error; a full disk at a save names the path and the free space and leaves no ``.tmp-*``; a torn last
``log.jsonl`` line reads as absent and a resumed run logs no step twice."""

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from train_helpers import CONFIGS, overrides, run_train

# The trainer with a file-size limit: any file written past LIMIT bytes fails with EFBIG ("File too large"), as on
# a full disk (the checkpoint's generator file is ~18 MB, log lines and config.yaml are far smaller).
SMALL_DISK = """
import resource, signal, sys
from meditok.tokenizer.training import trainer as T
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
sys.exit(T.main(sys.argv[2:]))
"""


def _errors(stderr):
    return [line for line in stderr.splitlines() if line.startswith("meditok-train: error:")]


def _unwritable_dir(tmp_path):
    """A directory this process cannot write: chmod 555 for a normal user; for root (which ignores modes) a folder
    in sysfs, which refuses new files to everyone."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError:
        return folder
    return Path("/sys/kernel/meditok-run")


def test_read_only_output_dir_fails_at_start_up(assets, tmp_path):
    out = _unwritable_dir(tmp_path)
    result = run_train("tiny-cpu-stage1.yaml", overrides(assets, out, "run.steps=2"))
    assert result.returncode == 2, result.stderr[-3000:]
    errors = _errors(result.stderr)
    assert len(errors) == 1, result.stderr[-3000:]
    assert f"run.output_dir: {out} is not writable (" in errors[0] and " free" in errors[0], errors[0]
    assert "teacher:" not in result.stderr  # before the pretrained parts, DeepSpeed or the data are loaded
    assert "Traceback" not in result.stderr


def test_full_disk_at_save_names_path_and_free_space(assets, tmp_path):
    out = tmp_path / "run"
    args = overrides(assets, out, "run.steps=4", "run.ckpt_every=2")
    cmd = [sys.executable, "-c", SMALL_DISK, str(1 << 20), "--config", str(CONFIGS / "tiny-cpu-stage1.yaml"), *args]
    env = {**os.environ, "DS_ACCELERATOR": "cpu"}
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 2, result.stderr[-5000:]
    errors = _errors(result.stderr)
    assert len(errors) == 1, result.stderr[-3000:]
    tmp = out / "checkpoints" / ".tmp-step-00000002"
    assert errors[0].startswith(f"meditok-train: error: {tmp}: saving the step 2 checkpoint failed ("), errors[0]
    assert "free)" in errors[0] and "the last complete checkpoint (none) is kept" in errors[0]
    assert "Traceback" not in result.stderr
    assert list((out / "checkpoints").iterdir()) == []  # the partial .tmp-step-00000002 was removed
    steps = [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2]


def test_torn_log_line_and_resume_log_each_step_once(assets, tmp_path):
    out = tmp_path / "run"
    base = ("run.steps=4", "run.ckpt_every=2")
    first = run_train("tiny-cpu-stage1.yaml", overrides(assets, out, *base, "run.stop_after=2"))
    assert first.returncode == 0, first.stderr[-5000:]
    # As after a crash past the step-2 checkpoint: step 3 was logged, step 4's line was torn by a full disk.
    with open(out / "log.jsonl", "a") as log:
        log.write(json.dumps({"step": 3, "loss": 123.0, "from_the_crashed_run": True}) + "\n")
        log.write('{"step": 4, "loss": 0.5, "rec"')
    resumed = run_train("tiny-cpu-stage1.yaml", overrides(assets, out, *base, "run.resume=auto", "run.plots=true"))
    assert resumed.returncode == 0, resumed.stderr[-5000:]
    lines = (out / "log.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]  # every line parses
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert not any(r.get("from_the_crashed_run") for r in records)
    assert (out / "loss.png").is_file() and (out / "export" / "model.safetensors").is_file()
