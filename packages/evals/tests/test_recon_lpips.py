"""`recon` without LPIPS weights says so (report and metrics.json) and how to enable it; LPIPS weights that are
given but missing or unreadable stop the run before any work."""

from __future__ import annotations

import json

import pytest

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
