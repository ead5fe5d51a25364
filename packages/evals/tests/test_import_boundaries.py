"""meditok-evals uses the tokenizer's auxiliary networks (LPIPS, text towers, text alignment), never its training
internals: importing every evals module and loading an LPIPS network, a text tower and (the absence of) a text
alignment through meditok-eval's own loaders leaves meditok.tokenizer.training and DeepSpeed unimported."""

import pkgutil
import subprocess
import sys

import meditok.evals

CODE = """
import importlib, sys
import torch
from meditok.tokenizer.auxiliary import VGG16LPIPS, TextConfig, TextTower, save_aux
save_aux(VGG16LPIPS(8), {root!r} + "/lpips")
save_aux(TextTower(TextConfig()), {root!r} + "/text")
for name in {modules!r}:
    importlib.import_module(name)
from meditok.evals.perceptual import load_lpips
from meditok.evals.zeroshot import load_text_tower, resolve_alignment
lpips = load_lpips({root!r} + "/lpips")
tower = load_text_tower({root!r} + "/text")
assert resolve_alignment({root!r}, None) is None
assert tower.encode_text(["a ct image"]).shape == (1, 64)
assert float(lpips(torch.zeros(1, 3, 32, 32), torch.zeros(1, 3, 32, 32)).sum()) == 0.0
print(sorted(m for m in sys.modules if m.startswith("meditok.tokenizer.training") or m == "deepspeed"))
"""


def test_evals_never_imports_tokenizer_training(tmp_path):
    modules = sorted(f"meditok.evals.{m.name}" for m in pkgutil.iter_modules(meditok.evals.__path__))
    assert "meditok.evals.zeroshot" in modules and "meditok.evals.perceptual" in modules
    code = CODE.format(root=str(tmp_path), modules=modules)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out.splitlines()[-1] == "[]"
