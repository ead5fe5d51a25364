"""The README's Python example runs as written (with the tiny model standing in for the published weights)."""

import re
from pathlib import Path

import numpy as np
import torch

README = Path(__file__).parents[1] / "README.md"


def test_readme_python_example_runs(tmp_path, tiny_weights, monkeypatch):
    """As written, Hub name included: `massaki75/meditok` resolves offline from a Hub cache built on disk that holds
    the tiny model as its meditok_simple_v1.pth (and, as the real repository, no config.json)."""
    import huggingface_hub.constants as hub_constants

    from meditok.tokenizer.testing import write_hub_cache

    cache = tmp_path / "hub-cache"
    for name, value in (("HF_HUB_OFFLINE", True), ("HF_HUB_CACHE", str(cache))):
        monkeypatch.setenv(name, "1" if value is True else value)
        monkeypatch.setattr(hub_constants, name, value)  # read by huggingface_hub at import time
    write_hub_cache(cache, "massaki75/meditok", {"meditok_simple_v1.pth": tiny_weights["bare"]}, absent=["config.json"])
    block = re.search(r"```python\n(.*?)```", README.read_text(), re.S).group(1)
    assert 'MedITok.from_pretrained("massaki75/meditok")' in block
    monkeypatch.chdir(tmp_path)
    namespace = {"pil_image_or_array": np.random.default_rng(0).integers(0, 256, (300, 200, 3), dtype=np.uint8)}
    exec(compile(block, str(README), "exec"), namespace)
    assert namespace["codes"].shape == (1, 8, 256)
    assert namespace["x_hat"].shape == (1, 3, 256, 256)
    torch.testing.assert_close(namespace["emb"].norm(dim=-1), torch.ones(1))
    assert (tmp_path / "recon.png").is_file() and (tmp_path / "meditok-l" / "model.safetensors").is_file()
