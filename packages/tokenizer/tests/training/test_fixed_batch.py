"""One run on a fixed batch of 4 real images (augmentation off, GAN off) plus a corrupt file in the manifest:
the loss falls (overfit), the corrupt image is skipped and counted, the run writes its PNG report, and
`meditok export` turns its checkpoint into a release directory without importing DeepSpeed. Strict mode raises."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from train_helpers import overrides, run_train, venv_tool

from meditok.tokenizer import MedITok

STEPS = 30


@pytest.fixture(scope="module")
def fixed_manifest(assets, tmp_path_factory):
    root = tmp_path_factory.mktemp("fixed")
    samples = assets["root"] / "samples"
    rows, seen = [], set()
    for line in (samples / "manifest.jsonl").read_text().splitlines():
        row = json.loads(line)
        if row["kind"] == "image" and row["modality"] not in seen and row["modality"] != "ct":
            seen.add(row["modality"])
            rows.append({**row, "path": str(samples / row["path"])})
    assert len(rows) >= 4, rows
    corrupt = root / "corrupt_xray.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 8)
    rows = rows[:4] + [{"path": str(corrupt), "modality": "xray", "kind": "image"}]
    manifest = root / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return manifest


def _fixed_batch_args(assets, manifest, out, *extra):
    return overrides(
        assets,
        out,
        f"data.source={manifest}",
        "data.augment=false",  # the same 4 images, unaugmented, every step (batch 4 = the 4 readable rows)
        "disc.enabled=false",  # no adversarial term: the objective is fixed
        f"data.skip_log={out / 'skipped.txt'}",
        *extra,
    )


@pytest.fixture(scope="module")
def fixed_run(assets, fixed_manifest, tmp_path_factory):
    out = tmp_path_factory.mktemp("overfit")
    result = run_train(
        "tiny-cpu-stage1.yaml",
        _fixed_batch_args(
            assets,
            fixed_manifest,
            out,
            f"run.steps={STEPS}",
            f"run.ckpt_every={STEPS}",
            "optim.lr=2e-3",
            "optim.warmup=0.05",
            "run.log_every=1",
            "run.plots=true",
        ),
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    records = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    return out, records, result


def test_loss_falls_on_a_fixed_real_batch(fixed_run):
    _, records, _ = fixed_run
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    rec = np.array([r["rec"] for r in records])
    loss = np.array([r["loss"] for r in records])
    first, last = rec[:3].mean(), rec[-5:].mean()
    # Measured (40 steps): rec 0.72 (mean of steps 1-3) -> 0.19 (steps 36-40), 0.20 by step 25; the run is deterministic (fp32 CPU, fixed
    # seeds). Half is a loose bar that a broken backward / optimiser step cannot pass.
    assert last < 0.5 * first, (first, last)
    assert loss[-5:].mean() < loss[:3].mean()
    assert np.isfinite(loss).all()


def test_corrupt_image_is_skipped_and_counted(fixed_run):
    out, records, _ = fixed_run
    skipped = [r["skipped_images"] for r in records]
    # One corrupt row per pass over the 5-row manifest, one pass per step.
    assert skipped == sorted(skipped) and STEPS - 1 <= skipped[-1] <= STEPS
    lines = (out / "skipped.txt").read_text().splitlines()
    assert len(lines) == 1 and "corrupt_xray.png" in lines[0]


def test_strict_mode_raises_on_the_corrupt_image(assets, fixed_manifest, tmp_path):
    result = run_train(
        "tiny-cpu-stage1.yaml",
        _fixed_batch_args(assets, fixed_manifest, tmp_path, "run.steps=3", "data.strict=true", "lpips.enabled=false"),
    )
    assert result.returncode == 2, result.stderr[-3000:]
    assert "meditok-train: error:" in result.stderr and "corrupt_xray.png" in result.stderr


def test_run_writes_loss_curve_and_reconstruction_grid(fixed_run):
    out, records, result = fixed_run
    loss_png = Image.open(out / "loss.png")
    assert loss_png.format == "PNG" and loss_png.size == (640, 360)
    pixels = np.asarray(loss_png.convert("RGB")).reshape(-1, 3)
    for colour in ((31, 119, 180), (214, 39, 40)):  # the loss and rec curves were drawn
        assert (pixels == colour).all(1).sum() > 50, colour
    grid = np.asarray(Image.open(out / "reconstructions.png").convert("RGB"))
    assert grid.shape == (2 * 64 + 2, 4 * 64 + 3 * 2, 3)
    originals, recons = grid[:64].astype(float), grid[66:].astype(float)
    assert originals.std() > 10  # real images, not blank
    psnr_grid = 10 * np.log10(255.0**2 / ((originals - recons) ** 2).mean())
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["psnr_last_batch"] > 12 and psnr_grid > 12, (summary, psnr_grid)  # measured 14.8 dB


def test_meditok_export_cli_without_deepspeed(fixed_run, tmp_path):
    out, _, _ = fixed_run
    code = (
        "import sys; sys.modules['deepspeed'] = None\n"  # importing deepspeed would now fail
        "from meditok.tokenizer.cli import main\n"
        f"sys.exit(main(['export', {str(out / 'checkpoints')!r}, {str(tmp_path / 'release')!r}]))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"step {STEPS}" in result.stdout
    cli = load_file(tmp_path / "release" / "model.safetensors")
    trainer = load_file(out / "export" / "model.safetensors")
    assert cli.keys() == trainer.keys() and all(torch.equal(cli[k], trainer[k]) for k in cli)
    assert MedITok.from_pretrained(tmp_path / "release").config.name == "tiny"
    # The console script is the same entry point.
    result = subprocess.run(
        [venv_tool("meditok"), "export", str(out / "nothing"), str(tmp_path / "x")], capture_output=True, text=True
    )
    assert result.returncode == 1 and "no such checkpoint directory" in result.stderr
