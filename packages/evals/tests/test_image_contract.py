"""The image-input contract, meditok-eval doors: manifests (every subcommand's loader), MedMNIST-style NPZ arrays and
folders of generated images give the token ids of the independent reference (`meditok.data.testing_contract`:
pydicom / nibabel / PIL / numpy only) on real files, and a recorded image_input in the weights reaches the loader."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from meditok.data import read_2d
from meditok.data.testing_contract import CASES, materialize, reference_input
from meditok.evals.data import image_input_of, load_eval_set, load_npz
from meditok.evals.gen import load_folder_images
from meditok.tokenizer import MedITok


@pytest.fixture(scope="module")
def tok():
    return MedITok.from_config("tiny", seed=3)


def _ids(tok, x) -> np.ndarray:
    return tok.encode(x if x.ndim == 4 else x[None])[0].numpy()


def test_manifest_loader_gives_the_reference_ids_for_every_case(tok, tmp_path):
    files = {case: materialize(case, tmp_path / "files") for case in CASES}
    manifest = tmp_path / "manifest.jsonl"
    rows = [{"path": str(p), "modality": read_2d(p).modality, "case": c} for c, p in files.items()]
    for row in rows:
        if row["path"].endswith(".nii.gz"):
            row["kind"] = "volume"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = load_eval_set(manifest, label_key="case", progress=False)
    assert data.images.shape == (len(CASES), 3, 256, 256)
    for image, label in zip(data.images, data.labels):
        assert np.array_equal(_ids(tok, image), _ids(tok, reference_input(label, files[label]))), label


def test_npz_arrays_and_generated_pngs_follow_the_contract(tok, tmp_path):
    fundus = materialize("fundus_rgb_png", tmp_path)
    expected = _ids(tok, reference_input("fundus_rgb_png", fundus))
    from PIL import Image

    pixels = np.asarray(Image.open(fundus).convert("RGB"))
    npz = tmp_path / "fundusmnist.npz"
    np.savez(npz, train_images=pixels[None], train_labels=np.array([[1]]), test_images=pixels[None],
             test_labels=np.array([[0]]))  # fmt: skip
    data = load_npz(npz, progress=False)
    assert all(np.array_equal(_ids(tok, image), expected) for image in data.images)
    # A folder of generated images (`meditok-eval gen --generated DIR`) is read like any file.
    (tmp_path / "gen" / "fundus").mkdir(parents=True)
    (tmp_path / "gen" / "fundus" / "0.png").write_bytes(fundus.read_bytes())
    spec = image_input_of(argparse.Namespace(size=None, resize=None, resampler=None, ct_window=None))
    fake = load_folder_images({"fundus": [tmp_path / "gen" / "fundus" / "0.png"]}, spec, progress=False)
    assert np.array_equal(_ids(tok, fake["fundus"][0]), expected)


def test_recorded_image_input_and_flags_reach_the_loader(tmp_path):
    from meditok.tokenizer.preprocessing import ImageInput

    tok = MedITok.from_config("tiny", seed=3)
    tok.image_input = ImageInput(size=64, resize="pad", resampler="bicubic", ct_window="lung")
    weights = tok.save_pretrained(tmp_path / "release")
    unset = argparse.Namespace(size=None, resize=None, resampler=None, ct_window=None)
    assert image_input_of(unset, weights) == tok.image_input
    flags = argparse.Namespace(size=128, resize=None, resampler=None, ct_window="-100,300")
    assert image_input_of(flags, weights) == ImageInput(size=128, resize="pad", resampler="bicubic",
                                                        ct_window=(-100.0, 300.0))  # fmt: skip
