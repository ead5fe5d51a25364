"""The README's training block runs as written (packages/tokenizer/README.md, "Training"), and the start-up errors a
reader of that block meets name their fix."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from train_helpers import PKG, overrides, run_train

README = PKG / "README.md"
ROOT = PKG.parents[1]


def readme_training_commands() -> list[str]:
    """The fenced bash block of the README's "## Training" section, continuation lines joined, comments kept."""
    text = README.read_text()
    section = text[text.index("## Training") :]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line.strip() for line in re.sub(r"\\\n\s*", "", block).splitlines() if line.strip()]


def _latest_state(run: Path) -> dict:
    checkpoints = run / "checkpoints"
    return json.loads((checkpoints / (checkpoints / "latest").read_text().strip() / "trainer_state.json").read_text())


def test_readme_training_block_runs_as_written(tmp_path):
    """Every complete command of the block, in order, in a fresh directory beside the checkout's packages/ (the block's
    paths are relative to the repository root): samples, shards, stand-ins, stage 1 with 1 process and with 2 ranks,
    stage 2. Lines with a placeholder (`--config ...`) or another machine (`--hostfile`) are forms, not commands."""
    commands = readme_training_commands()
    runnable = [c for c in commands if "..." not in c and "--hostfile" not in c]
    one_process = [c for c in runnable if c.startswith("deepspeed ") and "tiny-cpu-stage1.yaml" in c]
    two_ranks = [c for c in runnable if "--num_gpus 2" in c and "tiny-cpu-stage1.yaml" in c]
    assert len(one_process) == 1 and len(two_ranks) == 1, runnable  # the block still shows both stage-1 runs
    (tmp_path / "packages").symlink_to(ROOT / "packages")
    # This environment's console scripts first; one OpenMP thread per process, as the README advises on a shared machine
    # (two threads on two busy cores: ~11 s instead of ~0.5 s per step, measured).
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "OMP_NUM_THREADS": "1",
    }
    exports: list[str] = []
    for command in runnable:
        if command.startswith("export "):
            exports.append(command)
            continue
        script = "\n".join(["set -euo pipefail", *exports, command])
        result = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                                timeout=900)  # fmt: skip
        assert result.returncode == 0, f"{command}\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
        if command in one_process or command in two_ranks:
            state = _latest_state(tmp_path / "runs" / "tiny-stage1")
            assert state["world_size"] == (2 if command in two_ranks else 1)
            assert state["step"] == 60 and state["stage"] == 1  # tiny-cpu-stage1.yaml: run.steps 60
            assert (tmp_path / "runs" / "tiny-stage1" / "export" / "model.safetensors").is_file()
    shards = json.loads((tmp_path / "runs" / "shards" / "index.json").read_text())["shards"]
    assert len(shards) >= 2  # a shard per rank: pydicom(-data) + scikit-image give 30 images (2 shards), [samples] 38


def test_fewer_shards_than_streams_is_a_startup_error(assets, tmp_path):
    shards = len(json.loads((Path(assets["shards"]) / "index.json").read_text())["shards"])
    workers = shards + 1  # one process: world size 1 x (shards + 1) data workers
    result = run_train("tiny-cpu-stage1.yaml", overrides(assets, tmp_path, f"data.num_workers={workers}"))
    assert result.returncode == 2, result.stderr[-3000:]
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith(f"meditok-train: error: data.source {assets['shards']}: {shards} shard(s)")
    assert f"1 rank(s) x {workers} worker(s) = {workers} streams" in error
    assert f"meditok-data shard MANIFEST -o {assets['shards']} --shard-size N" in error
    assert not (tmp_path / "log.jsonl").exists()


def test_missing_standin_names_the_command_that_makes_it(assets, tmp_path):
    aux = tmp_path / "aux"
    result = run_train(
        "tiny-cpu-stage1.yaml", overrides(assets, tmp_path / "run", f"teacher.path={aux}/vision_teacher")
    )
    assert result.returncode == 2
    error = result.stderr.strip().splitlines()[-1]
    assert f"teacher.path: file not found: {aux}/vision_teacher" in error
    command = re.search(r'python -c "(.*?)"', error).group(1)
    assert f"make_standins('{aux}')" in command
    subprocess.run([sys.executable, "-c", command], check=True, timeout=300)  # the named command makes it
    assert (aux / "vision_teacher" / "model.safetensors").is_file()
