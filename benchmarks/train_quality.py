"""Quality run: the tiny stage-1 config trained for a fixed budget on the real offline samples, PSNR/SSIM on held-out
real images during and after training.

    DS_ACCELERATOR=cpu OMP_NUM_THREADS=2 python benchmarks/train_quality.py --work /work/quality/run \
        --steps 250 --eval-every 25 --write-benchmarks

1. `meditok-data samples` (88 real 2-D images; see BENCHMARKS.md "meditok-evals"), split into a training manifest and
   a held-out manifest. The held-out set is fixed by source (`HELDOUT`: every image of these sources, so no
   neighbouring slice/frame of a held-out image is trained on): 2 CT, 2 MR, 1 X-ray, 1 fundus, 1 ultrasound,
   1 pathology, 2 dermoscopy = 10 images. The rest (78) are sharded (`meditok-data shard`, small side 160).
2. `packages/tokenizer/configs/tiny-cpu-stage1.yaml` with the random stand-ins of `make_standins` (LPIPS, ViT teacher),
   trained in this process through `meditok.tokenizer.training.Trainer` for `--steps` optimiser steps (the whole
   LR schedule spans them). Default deviation from the config: **GAN off** (`disc.enabled=false`; on this CPU the
   discriminator path makes a step ~20x slower, so a fixed wall-clock budget buys ~20x fewer steps). Everything else
   (0.2 L1 + L2, LPIPS stand-in, VQ, CLIP to the stand-in teacher 0.1, augmentation, CT windowing) as the config.
3. Every `--eval-every` steps (and at step 0): the core in eval mode reconstructs the held-out images (meditok-data's
   eval `Preprocess`, centre crop, `--size`, the training size) and PSNR/SSIM come from `meditok.evals.metrics.psnr_ssim`
   (uint8, data range 255; equal to scikit-image). Checkpoints are written at each evaluation (`run.ckpt_every`).
4. Outputs: `--results` (committed: `loss.png`, `psnr.png`, `heldout_reconstructions.png`, `quality_run.json`,
   `heldout.jsonl`); `WORK/train/export/` (the exported `save_pretrained` model; not committed) and the run's
   `log.jsonl`/checkpoints under `WORK/train`. `--write-benchmarks` replaces the "## meditok-tokenizer quality run"
   section of BENCHMARKS.md.

Needs the `train` extra, meditok-data and meditok-evals (for the metric), matplotlib for the curves.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "packages" / "tokenizer"
CONFIG = PKG / "configs" / "tiny-cpu-stage1.yaml"

# Held-out sources (manifest `dataset_name`), every row of each: never in the training shards.
HELDOUT = (
    "ct_head_693",  # CT, 512^2 DICOM head slice
    "ct_pancreas",  # CT, 512^2 DICOM abdominal slice
    "mr_liver",  # MR DICOM
    "mr_shoulder",  # MR DICOM
    "xray_chest_pa",  # CR chest X-ray DICOM
    "fundus_retina",  # fundus photograph
    "us_doppler",  # ultrasound (Doppler) DICOM
    "path_ihc",  # pathology IHC tile
    "derm_nonSimilar_patch1017a",  # dermoscopy 32x32 patch
    "derm_nonSimilar_patch1017b",
)
SECTION = "## meditok-tokenizer quality run"


def prepare(work: Path) -> dict:
    from meditok.data.samples import assemble_samples
    from meditok.tokenizer.training.testing import make_standins

    samples = work / "samples"
    if not (samples / "manifest.jsonl").exists():
        assemble_samples(samples)
    rows = [json.loads(line) for line in (samples / "manifest.jsonl").read_text().splitlines() if line.strip()]
    held = [r for r in rows if r["dataset_name"] in HELDOUT]
    train = [r for r in rows if r["dataset_name"] not in HELDOUT]
    missing = set(HELDOUT) - {r["dataset_name"] for r in held}
    if missing:
        raise SystemExit(f"held-out sources missing from the samples: {sorted(missing)}")
    for name, part in (("train.jsonl", train), ("heldout.jsonl", held)):
        (samples / name).write_text("".join(json.dumps(r) + "\n" for r in part))
    shards = work / "shards"
    if not shards.exists():
        tool = Path(sys.executable).parent / "meditok-data"
        subprocess.run(
            [str(tool), "shard", str(samples / "train.jsonl"), "-o", str(shards), "--shard-size", "16"]
            + ["--max-side", "160"],
            check=True,
            capture_output=True,
        )
    aux = make_standins(work / "aux")
    return {"samples": samples, "shards": shards, "aux": aux, "n_train": len(train), "n_heldout": len(held)}


def evaluate(core, images, batch: int = 8):
    import torch

    from meditok.evals.metrics import psnr_ssim

    was_training = core.training
    core.eval()
    outs = []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            outs.append(core(images[i : i + batch])["reconstruction"].float())
    core.train(was_training)
    recon = torch.cat(outs)
    psnr, ssim = psnr_ssim(images, recon)
    return psnr, ssim, recon


def plot_curves(records: list[dict], evals: list[dict], results: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=100)
    steps = [r["step"] for r in records]
    for key in ("loss", "rec"):
        ax.plot(steps, [r[key] for r in records], label=key, lw=1)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (log)")
    ax.set_title("tiny stage 1, GAN off: training loss")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(results / "loss.png")
    plt.close(fig)

    fig, ax1 = plt.subplots(figsize=(6.4, 3.6), dpi=100)
    s = [e["step"] for e in evals]
    ax1.plot(s, [e["psnr"] for e in evals], "o-", color="tab:blue", label="PSNR")
    ax1.set_xlabel("step")
    ax1.set_ylabel("held-out PSNR (dB)", color="tab:blue")
    ax2 = ax1.twinx()
    ax2.plot(s, [e["ssim"] for e in evals], "s--", color="tab:orange", label="SSIM")
    ax2.set_ylabel("held-out SSIM", color="tab:orange")
    ax1.set_title(f"held-out PSNR / SSIM ({len(HELDOUT)} real images)")
    ax1.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(results / "psnr.png")
    plt.close(fig)


def write_benchmarks(summary: dict, path: Path) -> None:
    s = summary
    per = ", ".join(f"{k} {v['psnr']:.2f} / {v['ssim']:.3f}" for k, v in s["per_modality"].items())
    curve = ", ".join(f"{e['step']}: {e['psnr']:.2f}" for e in s["evals"])
    rel = lambda p: os.path.relpath(p, ROOT)  # noqa: E731
    text = f"""{SECTION}

`{s["command"]}` — {s["date"]}, {s["machine"]}; one process, {s["torch_threads"]} torch threads.
**Load**: the 2 cores were shared with another engineer's vLLM tests; load average {s["load_before"]} before,
{s["load_after"]} after (1/5/15 min), so the wall time is pessimistic; the step count, not the time, is the budget.

* **Budget**: {s["steps"]} optimiser steps × batch {s["batch"]} at {s["image_size"]} px ({s["steps"] * s["batch"]} images,
  ≈ {s["steps"] * s["batch"] / s["n_train"]:.0f} epochs of the {s["n_train"]} training images), `tiny-cpu-stage1.yaml` with
  `{" ".join(s["overrides"])}`: **GAN off** (on this CPU the discriminator path makes a step ~20× slower), all other
  losses on (0.2·L1 + L2, LPIPS and ViT-teacher *random stand-ins*, VQ, CLIP 0.1), augmentation + CT windowing,
  warm-up + cosine LR. Training took {s["train_wall_s"] / 60:.1f} min wall ({s["train_steps_per_s"]:.2f} steps/s,
  {s["train_steps_per_s"] * s["batch"]:.1f} images/s, evaluations excluded); the whole script {s["total_wall_s"] / 60:.1f} min.
* **Held out** (every image of these sources, never in the training shards; `{rel(s["heldout_manifest"])}`):
  {", ".join(HELDOUT)} — {s["n_heldout"]} images (CT 2, MR 2, X-ray 1, fundus 1, US 1, pathology 1, dermoscopy 2).
  Evaluated at {s["image_size"]}² (eval `Preprocess`, centre crop), PSNR/SSIM by `meditok.evals.metrics.psnr_ssim`.
* **Final held-out**: **PSNR {s["final"]["psnr"]:.2f} dB, SSIM {s["final"]["ssim"]:.3f}** (mean over {s["n_heldout"]} images;
  step 0, untrained: {s["evals"][0]["psnr"]:.2f} dB / {s["evals"][0]["ssim"]:.3f}). Per modality (PSNR / SSIM): {per}.
* PSNR curve (step: dB): {curve}.
* Figures: `{rel(s["figures"]["loss"])}`, `{rel(s["figures"]["psnr"])}`, `{rel(s["figures"]["grid"])}`
  (held-out originals over reconstructions); numbers in `{rel(s["figures"]["json"])}`.
  The exported model (`save_pretrained`, not committed) is `{s["export"]}`.
"""
    md = path.read_text()
    pattern = re.compile(rf"^{re.escape(SECTION)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(md):
        md = pattern.sub(text + "\n", md)
    else:  # before "## meditok-evals" when present, else at the end
        anchor = md.find("## meditok-evals")
        md = md[:anchor] + text + "\n" + md[anchor:] if anchor >= 0 else md.rstrip() + "\n\n" + text
    path.write_text(md)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/meditok-quality"), help="samples, shards, run, export")
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--steps", type=int, default=250)
    parser.add_argument("--eval-every", type=int, default=25)
    parser.add_argument("--size", type=int, default=128, help="training and held-out image size")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--gan", action="store_true", help="keep the GAN on (the config's default; ~20x slower)")
    parser.add_argument("--write-benchmarks", action="store_true", help="replace the section in BENCHMARKS.md")
    parser.add_argument("overrides", nargs="*", help="extra config overrides, section.key=value")
    args = parser.parse_args()
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    t0 = time.perf_counter()
    load_before = [round(x, 2) for x in os.getloadavg()]
    import torch

    from meditok.evals.data import load_eval_set
    from meditok.tokenizer.training import Trainer, load_config
    from meditok.tokenizer.training.report import save_reconstruction_grid

    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    results = args.results.resolve()
    results.mkdir(parents=True, exist_ok=True)
    assets = prepare(work)
    out = work / "train"
    if out.exists():
        shutil.rmtree(out)
    overrides = [
        f"data.image_size={args.size}",
        f"data.batch_size={args.batch}",
        f"run.steps={args.steps}",
        f"run.ckpt_every={args.eval_every}",
        "run.log_every=5",
        *([] if args.gan else ["disc.enabled=false"]),
        *args.overrides,
    ]
    internal = [
        f"data.source={assets['shards']}",
        f"lpips.path={assets['aux']['lpips']}",
        f"teacher.path={assets['aux']['vision_teacher']}",
        f"disc.path={assets['aux']['disc_backbone']}",
        f"run.output_dir={out}",
        "run.progress=false",
        "run.tensorboard=false",
        "run.plots=false",
    ]
    cfg = load_config(CONFIG, internal + overrides)
    heldout = load_eval_set(assets["samples"] / "heldout.jsonl", size=args.size, progress=False)
    shutil.copy(assets["samples"] / "heldout.jsonl", results / "heldout.jsonl")

    trainer = Trainer(cfg).setup()
    core = trainer.gen_engine.module.core
    images = heldout.images.to(trainer.device)
    evals, train_wall = [], 0.0

    def record(step: int) -> torch.Tensor:
        psnr, ssim, recon = evaluate(core, images)
        e = {"step": step, "psnr": float(psnr.mean()), "ssim": float(ssim.mean()), "train_wall_s": round(train_wall, 1)}
        e["per_image_psnr"] = [round(float(p), 3) for p in psnr]
        e["per_image_ssim"] = [round(float(s), 4) for s in ssim]
        evals.append(e)
        print(json.dumps({k: v for k, v in e.items() if not k.startswith("per_")}), flush=True)
        return recon

    record(0)
    for stop in range(args.eval_every, args.steps + args.eval_every, args.eval_every):
        trainer.cfg.run.stop_after = min(stop, args.steps)
        t = time.perf_counter()
        trainer.train()  # continues from trainer.step; the final call (step == run.steps) writes OUT/export
        train_wall += time.perf_counter() - t
        recon = record(trainer.step)
    trainer.close()

    records = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    figures = {
        "loss": results / "loss.png",
        "psnr": results / "psnr.png",
        "grid": results / "heldout_reconstructions.png",
        "json": results / "quality_run.json",
    }
    plot_curves(records, evals, results)
    save_reconstruction_grid(images.cpu(), recon.cpu(), figures["grid"], max_images=len(images))
    final = evals[-1]
    per_modality: dict[str, dict[str, float]] = {}
    for group in dict.fromkeys(heldout.groups):
        idx = [i for i, g in enumerate(heldout.groups) if g == group]
        per_modality[group] = {
            "psnr": sum(final["per_image_psnr"][i] for i in idx) / len(idx),
            "ssim": sum(final["per_image_ssim"][i] for i in idx) / len(idx),
        }
    cmd_overrides = [o for o in args.overrides]
    summary = {
        "command": "DS_ACCELERATOR=cpu OMP_NUM_THREADS=2 python benchmarks/train_quality.py "
        + f"--work {args.work} --steps {args.steps} --eval-every {args.eval_every} --size {args.size} "
        + f"--batch {args.batch}"
        + (" --gan" if args.gan else "")
        + (" --write-benchmarks" if args.write_benchmarks else "")
        + "".join(f" {o}" for o in cmd_overrides),
        "date": datetime.date.today().isoformat(),
        "time": time.strftime("%H:%M"),
        "machine": f"{platform.machine()}, {os.cpu_count()} vCPUs, Python {platform.python_version()}, "
        + f"torch {torch.__version__}",
        "torch_threads": torch.get_num_threads(),
        "steps": args.steps,
        "batch": args.batch,
        "image_size": args.size,
        "overrides": overrides,
        "n_train": assets["n_train"],
        "n_heldout": assets["n_heldout"],
        "heldout_sources": list(HELDOUT),
        "heldout_keys": list(heldout.keys),
        "heldout_groups": list(heldout.groups),
        "heldout_manifest": str(results / "heldout.jsonl"),
        "train_wall_s": round(train_wall, 1),
        "train_steps_per_s": args.steps / train_wall,
        "total_wall_s": round(time.perf_counter() - t0, 1),
        "load_before": load_before,
        "load_after": [round(x, 2) for x in os.getloadavg()],
        "final": {"psnr": final["psnr"], "ssim": final["ssim"]},
        "per_modality": per_modality,
        "evals": evals,
        "figures": {k: str(v) for k, v in figures.items()},
        "export": str(out / "export"),
    }
    figures["json"].write_text(json.dumps(summary, indent=1) + "\n")
    if args.write_benchmarks:
        write_benchmarks(summary, ROOT / "BENCHMARKS.md")
    print(json.dumps({k: summary[k] for k in ("final", "per_modality", "train_wall_s", "total_wall_s", "export")}))


if __name__ == "__main__":
    main()
