"""`recon` without LPIPS weights says so (report and metrics.json) and how to enable it; LPIPS weights that are
given but missing or unreadable stop the run before any work; the LPIPS that `recon` computes equals LPIPS written out
by hand (Zhang et al. 2018, the `lpips` package's VGG variant) on the same stand-in weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from meditok.evals.cli import main


def test_recon_without_lpips_says_why(tmp_path, one_per_modality, tiny_weights):
    out = tmp_path / "recon"
    args = ["recon", "--data", str(one_per_modality), "--weights", str(tiny_weights), "--no-fid"]
    assert main([*args, "--size", "32", "-o", str(out), "--quiet"]) == 0
    report = (out / "report.md").read_text()
    m = json.loads((out / "metrics.json").read_text())["metrics"]
    assert "**LPIPS skipped**" in report and "--lpips PATH" in report and "lpips_with_vgg.pth" in report
    assert "**rFID skipped** (--no-fid)" in report
    assert m["lpips_weights"] is None and "--lpips PATH" in m["skipped"]["lpips"] and m["skipped"]["rfid"]
    for r in m["tokenizers"].values():
        assert r["overall"]["lpips"] is None and r["overall"]["rfid"] is None and r["overall"]["psnr"] > 0
    overall = report.split("## Overall")[1].split("## Per modality")[0]
    rows = [line for line in overall.splitlines() if line.startswith("| MedITok") or line.startswith("| downsample")]
    assert len(rows) == 2 and all(line.rstrip(" |").endswith("– | –") for line in rows)  # LPIPS, rFID cells
    assert not (out / "lpips_per_modality.png").exists()


@pytest.mark.parametrize("case", ["missing", "unreadable", "wrong_network"])
def test_given_lpips_weights_are_checked_before_work(tmp_path, one_per_modality, tiny_weights, case, capsys):
    import torch

    path = tmp_path / "lpips_with_vgg.pth"
    if case == "unreadable":
        path.write_bytes(b"not a checkpoint")
    elif case == "wrong_network":
        torch.save({"features.0.weight": torch.zeros(3)}, path)
    out = tmp_path / "out"
    args = ["recon", "--data", str(one_per_modality), "--weights", str(tiny_weights), "--lpips", str(path)]
    assert main([*args, "--no-fid", "-o", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    expect = {
        "missing": "LPIPS weights not found",
        "unreadable": "cannot read",
        "wrong_network": "does not match the expected network",
    }[case]
    assert expect in err and str(path) in err
    assert not out.exists()


# The `lpips` package's constants and torchvision's vgg16().features layout, written here rather than read from the
# code under test: ScalingLayer shift/scale, and the conv indices of each of the 5 slices (relu1_2 ... relu5_3).
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)
VGG16_CONVS = ((0, 2), (5, 7), (10, 12, 14), (17, 19, 21), (24, 26, 28))


def _lpips_by_hand(state: dict, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-image LPIPS: VGG16 features of the scaled input at 5 depths; each feature vector divided by its L2 norm
    over channels; squared difference; 1x1 linear weights (no bias) over channels; mean over space; sum over the 5
    layers."""
    shift = torch.tensor(LPIPS_SHIFT).view(1, 3, 1, 1)
    scale = torch.tensor(LPIPS_SCALE).view(1, 3, 1, 1)

    def features(image):
        h, out = (image - shift) / scale, []
        for s, convs in enumerate(VGG16_CONVS):
            if s:
                h = F.max_pool2d(h, kernel_size=2, stride=2)
            for i in convs:
                h = F.relu(
                    F.conv2d(h, state[f"net.slice{s + 1}.{i}.weight"], state[f"net.slice{s + 1}.{i}.bias"], padding=1)
                )
            out.append(h)
        return out

    total = torch.zeros(len(x))
    for s, (a, b) in enumerate(zip(features(x), features(y))):
        a = a / (a.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)
        b = b / (b.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)
        w = state[f"lin{s}.model.1.weight"].view(1, -1, 1, 1)  # [1, C, 1, 1]: one non-negative weight per channel
        total += ((a - b) ** 2 * w).sum(dim=1).mean(dim=(1, 2))
    return total


def test_lpips_equals_the_formula_written_out(standins):
    from safetensors.torch import load_file

    from meditok.evals.perceptual import load_lpips

    state = load_file(Path(standins["lpips"]) / "model.safetensors")
    torch.testing.assert_close(state["scaling_layer.shift"].flatten(), torch.tensor(LPIPS_SHIFT))
    torch.testing.assert_close(state["scaling_layer.scale"].flatten(), torch.tensor(LPIPS_SCALE))
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 64, 64, generator=g) * 2 - 1
    y = torch.stack(
        [x[0], (x[1] + 0.1 * torch.randn(3, 64, 64, generator=g)).clamp(-1, 1), -x[2], torch.zeros_like(x[3])]
    )
    with torch.no_grad():
        expected = _lpips_by_hand(state, x, y)
    got = load_lpips(standins["lpips"])(x, y)
    assert expected[0] == 0 and (expected[1:] > 0).all() and expected[1] < expected[2]  # identical, near, far
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)
