"""The README's Python example runs as written (with the tiny model standing in for the published weights)."""

import re
from pathlib import Path

import numpy as np
import torch

README = Path(__file__).parents[1] / "README.md"


def test_readme_python_example_runs(tmp_path, tiny_weights, monkeypatch):
    block = re.search(r"```python\n(.*?)```", README.read_text(), re.S).group(1)
    block = block.replace('"meditok_simple_v1.pth"', repr(str(tiny_weights["directory"])))
    monkeypatch.chdir(tmp_path)
    namespace = {"pil_image_or_array": np.random.default_rng(0).integers(0, 256, (300, 200, 3), dtype=np.uint8)}
    exec(compile(block, str(README), "exec"), namespace)
    assert namespace["codes"].shape == (1, 8, 256)
    assert namespace["x_hat"].shape == (1, 3, 256, 256)
    torch.testing.assert_close(namespace["emb"].norm(dim=-1), torch.ones(1))
    assert (tmp_path / "recon.png").is_file() and (tmp_path / "meditok-l" / "model.safetensors").is_file()
