"""benchmarks/gpu.sh runs on the CPU (`--device cpu --quick`), so it is known to work before a GPU is lent."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[3] / "benchmarks" / "gpu.sh"


def test_gpu_script_runs_on_the_cpu(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        ["bash", str(SCRIPT), "--device", "cpu", "--quick", "--repeats", "1"],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads((tmp_path / "gpu_bench.json").read_text())
    assert summary["device"] == "cpu" and summary["config"] == "tiny"
    got = {(row["dtype"], row["batch"]) for row in summary["rows"]}
    assert got == {(d, b) for d in ("bfloat16", "float32") for b in (1, 2)}
    assert all(row["encode_img_s"] > 0 and row["decode_img_s"] > 0 for row in summary["rows"])
    assert 0.5 < summary["identical_codes_bf16_vs_fp32"] <= 1.0  # bf16 moves a few codes, never most of them
    assert "codes identical bf16 vs fp32:" in done.stdout
    # no CUDA here: the default (--device cuda) is one line saying so, not a traceback
    if not __import__("torch").cuda.is_available():
        failed = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, env=env, timeout=120)
        assert failed.returncode != 0 and "no CUDA device" in failed.stderr and "Traceback" not in failed.stderr
