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


def test_root_readme_fresh_machine_commands_run_as_written(tmp_path, tiny_weights):
    """The root README's two fresh-machine commands after their installs (the venv and pip steps need a fresh machine):
    `meditok-data samples` then `meditok reconstruct`, once with `--weights massaki75/meditok` served offline from a
    Hub cache built on disk (the tiny model as its meditok_simple_v1.pth) and once with the local file; same images."""
    import os
    import shutil
    import subprocess
    import sys

    from meditok.data.testing import require
    from meditok.tokenizer.testing import write_hub_cache

    require(
        shutil.which("meditok-data", path=str(Path(sys.executable).parent)) is not None, "meditok-data not installed"
    )
    text = (README.parents[2] / "README.md").read_text()
    hub_block, local_block = re.findall(r"```bash\n(.*?)```", text[text.index("## On a fresh machine") :], re.S)[:2]
    assert "--weights massaki75/meditok" in hub_block and "--weights meditok_simple_v1.pth" in local_block
    cache = tmp_path / "hub-cache"
    write_hub_cache(cache, "massaki75/meditok", {"meditok_simple_v1.pth": tiny_weights["bare"]}, absent=["config.json"])
    shutil.copyfile(tiny_weights["bare"], tmp_path / "meditok_simple_v1.pth")
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_CACHE": str(cache),
        "OMP_NUM_THREADS": "1",
    }
    images = {}
    for name, block in (("hub", hub_block), ("local", local_block)):
        steps = [s for s in block.strip().split(" && ") if not s.startswith(("python3 -m venv", ". ", "pip install"))]
        assert [s.split()[:2] for s in steps] == [["meditok-data", "samples"], ["meditok", "reconstruct"]], steps
        result = subprocess.run(["bash", "-c", " && ".join(steps)], cwd=tmp_path, env=env, capture_output=True,
                                text=True, timeout=600)  # fmt: skip
        assert result.returncode == 0, f"{name}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
        assert "ct_head_693.dcm: PSNR" in result.stdout
        images[name] = (tmp_path / "recon" / "ct_head_693_recon.png").read_bytes()
        shutil.rmtree(tmp_path / "recon")
    assert images["hub"] == images["local"]
