"""The image-input contract, tokenizer doors: the CLI, `MedITok.tokenize` / `prepare` with the file, and the same pixels
handed over as PIL image, numpy array and tensor give the token ids of the independent reference
(`meditok.data.testing_contract`: pydicom / nibabel / PIL / numpy only) on six real files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from meditok.data import load_unit_image
from meditok.data.testing_contract import CASES, materialize, reference_input
from meditok.tokenizer import MedITok
from meditok.tokenizer.cli import main


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    tok = MedITok.from_config("tiny", seed=7)
    weights = tok.save_pretrained(tmp_path_factory.mktemp("weights") / "tiny")
    return tok, weights


def _ids(tok: MedITok, x: torch.Tensor) -> np.ndarray:
    return tok.encode(x)[0].reshape(8, 16, 16).numpy()


@pytest.mark.parametrize("case", CASES)
def test_every_tokenizer_door_gives_the_reference_ids(case, tokenizer, tmp_path):
    tok, weights = tokenizer
    path = materialize(case, tmp_path)
    reference = reference_input(case, path)
    expected = _ids(tok, reference)

    # The file through the Python API: the same tensor as the reference, hence the same ids.
    torch.testing.assert_close(tok.prepare(path), reference, atol=2e-6, rtol=0)
    assert np.array_equal(tok.tokenize(path).numpy(), expected)
    assert np.array_equal(tok.tokenize(path.read_bytes()).numpy(), expected)  # an upload's bytes

    # The CLI, as a user types it.
    assert main(["encode", str(path), "--weights", str(weights), "-o", str(tmp_path / "codes.npz")]) == 0
    assert np.array_equal(np.load(tmp_path / "codes.npz")["codes_0"].astype(np.int64), expected)

    # The same pixels in memory: meditok-data's [0, 1] image as array, tensor and PIL image.
    unit, _ = load_unit_image(path)
    assert np.array_equal(tok.tokenize(unit).numpy(), expected)
    tensor = torch.from_numpy(unit.copy())
    tensor = tensor if unit.ndim == 2 else tensor.permute(2, 0, 1)
    assert np.array_equal(tok.tokenize(tensor).numpy(), expected)
    picture = Image.fromarray(unit) if unit.dtype == np.uint8 else Image.fromarray(unit, "F")
    assert np.array_equal(tok.tokenize(picture).numpy(), expected)

    # Raster files opened by the user with PIL (8-bit RGB and 16-bit "I;16") need no meditok-data at all.
    if path.suffix == ".png":
        with Image.open(path) as opened:
            assert np.array_equal(tok.tokenize(opened).numpy(), expected)


def test_recorded_settings_travel_with_the_weights_and_overrides_win(tmp_path):
    from meditok.tokenizer.preprocessing import ImageInput

    tok = MedITok.from_config("tiny", seed=7)
    tok.image_input = ImageInput(size=(64, 96), resize="pad", resampler="bilinear", ct_window="lung")
    loaded = MedITok.from_pretrained(tok.save_pretrained(tmp_path / "release"))
    assert loaded.image_input == tok.image_input
    path = materialize("ct_dicom_hu", tmp_path)
    assert loaded.prepare(path).shape == (1, 3, 64, 96)
    assert loaded.prepare(path, size=32, resize="squash").shape == (1, 3, 32, 32)
    # The recorded lung window (-1400, 200) reached meditok-data: the darkest pixel, by hand from pydicom's HU.
    import pydicom

    ds = pydicom.dcmread(path)
    darkest = float(ds.pixel_array.min()) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    lung = loaded.prepare(path, resize="native")  # 128x128: no resampling
    common = loaded.prepare(path, resize="native", ct_window="common")
    assert float(lung.min()) == pytest.approx(2 * min(max((darkest + 1400) / 1600, 0), 1) - 1, abs=1e-6)
    assert float(common.min()) == pytest.approx(2 * min(max((darkest + 1000) / 2000, 0), 1) - 1, abs=1e-6)
