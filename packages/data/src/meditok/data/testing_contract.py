"""Test fixture (not public API): the real files of the image-input contract test and an independent reference.

Every package's contract test (`tests/test_image_contract.py` in tokenizer, ar_model, ar_model's vLLM tests and evals)
feeds these files through its own doors and asserts the token ids equal the tokenizer's codes of `reference_input`,
which is computed here straight from pydicom / nibabel / PIL / numpy, following the documented contract
(`meditok.tokenizer.preprocessing`), without any meditok code. Sources are offline packages (pydicom-data,
scikit-image, nilearn); `materialize` writes the PNG cases from them into a folder.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch

CASES = (
    "ct_dicom_hu",  # CT_small.dcm: int16 + rescale -> HU, "common" window (-1000, 1000)
    "cr_monochrome1",  # RG3_UNCI.dcm: 10-bit MONOCHROME1 chest CR, 1760x1760 (inverted, percentiles)
    "xray_png16",  # RG1_UNCI.dcm's 15-bit display values saved as a 16-bit PNG (percentiles, non-square 1955x1841)
    "fundus_rgb_png",  # scikit-image's retina photo as an 8-bit RGB PNG (the reference's PIL LANCZOS path)
    "us_palette_nonsquare",  # examples_palette.dcm: 350x800 palette-colour ultrasound -> RGB uint8
    "mri_nifti_slice",  # nilearn's MNI152 T1 (uint8 NIfTI): middle axial slice in RAS display orientation
)
SIZE = 256
CT_WINDOW = (-1000.0, 1000.0)
PERCENTILES = (0.5, 99.5)
MAX_PERCENTILE_SAMPLES = 1 << 18  # documented: larger images estimate percentiles on a regular pixel grid


def _require(condition: bool, why: str) -> None:
    from meditok.data.testing import require

    require(condition, why)


def _dicom(name: str) -> Path:
    try:
        from pydicom.data import get_testdata_file
    except ImportError:
        _require(False, "pydicom is not installed")
    path = get_testdata_file(name)
    _require(path is not None, f"{name} not found: pip install pydicom-data")
    return Path(path)


def _mni_t1() -> Path:
    try:
        import nilearn
    except ImportError:
        _require(False, "nilearn is not installed (meditok-data[samples])")
    path = Path(nilearn.__file__).parent / "datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
    _require(path.is_file(), f"{path} missing")
    return path


def materialize(case: str, directory: str | os.PathLike) -> Path:
    """The file for ``case`` (a real DICOM / NIfTI as installed, or a PNG written into ``directory``)."""
    from PIL import Image

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if case == "ct_dicom_hu":
        return _dicom("CT_small.dcm")
    if case == "cr_monochrome1":
        return _dicom("RG3_UNCI.dcm")
    if case == "us_palette_nonsquare":
        return _dicom("examples_palette.dcm")
    if case == "mri_nifti_slice":
        return _mni_t1()
    if case == "xray_png16":
        import pydicom

        ds = pydicom.dcmread(_dicom("RG1_UNCI.dcm"))
        display = (2**15 - 1) - ds.pixel_array.astype(np.int32)  # MONOCHROME1 -> what a PNG export holds
        path = directory / "chest_pa_16bit.png"
        Image.fromarray(display.astype(np.uint16)).save(path)
        return path
    if case == "fundus_rgb_png":
        try:
            from skimage import data as skdata
        except ImportError:
            _require(False, "scikit-image is not installed")
        path = directory / "fundus_retina.png"
        Image.fromarray(skdata.retina()).save(path)
        return path
    raise KeyError(f"unknown contract case {case!r}; cases: {CASES}")


# ------------------------------------------------------------------------------------------ the reference


def _percentile_unit(values: np.ndarray) -> np.ndarray:
    values = values.astype(np.float32)
    sample = values
    if values.size > MAX_PERCENTILE_SAMPLES:
        stride = math.ceil(math.sqrt(values.size / MAX_PERCENTILE_SAMPLES))
        sample = values[::stride, ::stride]
    low, high = np.percentile(sample, PERCENTILES)
    return np.clip((values - np.float32(low)) / np.float32(high - low), 0, 1).astype(np.float32)


def _lanczos(pixels: np.ndarray, size: int) -> np.ndarray:
    """PIL LANCZOS squash to size x size: 8-bit images as they are, float images channel by channel in mode "F"."""
    from PIL import Image

    if pixels.dtype == np.uint8:
        return np.asarray(Image.fromarray(pixels).resize((size, size), Image.LANCZOS)).astype(np.float32) / 255
    channels = [pixels] if pixels.ndim == 2 else [pixels[..., c] for c in range(3)]
    out = [
        np.asarray(Image.fromarray(np.ascontiguousarray(c), "F").resize((size, size), Image.LANCZOS)) for c in channels
    ]
    return np.clip(out[0] if pixels.ndim == 2 else np.stack(out, 2), 0, 1).astype(np.float32)


def reference_pixels(case: str, path: str | os.PathLike) -> np.ndarray:
    """The case's pixels in [0, 1] before resizing (uint8 = x/255), read without meditok code."""
    from PIL import Image

    if case in ("ct_dicom_hu", "cr_monochrome1", "us_palette_nonsquare"):
        import pydicom

        ds = pydicom.dcmread(path)
        raw = ds.pixel_array
        if case == "ct_dicom_hu":
            hu = raw.astype(np.int32) * int(ds.RescaleSlope) + int(ds.RescaleIntercept)
            low, high = CT_WINDOW
            return np.clip((hu.astype(np.float32) - np.float32(low)) / np.float32(high - low), 0, 1).astype(np.float32)
        if case == "cr_monochrome1":
            return _percentile_unit((2 ** int(ds.BitsStored) - 1) - raw.astype(np.int32))
        from pydicom.pixels import apply_color_lut

        rgb = apply_color_lut(raw, ds)
        return (
            (rgb >> 8).astype(np.uint8)
            if int(ds.RedPaletteColorLookupTableDescriptor[2]) == 16
            else rgb.astype(np.uint8)
        )
    if case == "xray_png16":
        with Image.open(path) as image:
            return _percentile_unit(np.asarray(image))
    if case == "fundus_rgb_png":
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    if case == "mri_nifti_slice":
        import nibabel as nib

        volume = np.asanyarray(nib.as_closest_canonical(nib.load(str(path))).dataobj)
        axial = volume[:, :, volume.shape[2] // 2]  # RAS: x right, y anterior
        return np.ascontiguousarray(axial.T[::-1])  # rows anterior at the top, columns patient right on image right
    raise KeyError(f"unknown contract case {case!r}")


def reference_input(case: str, path: str | os.PathLike, size: int = SIZE) -> torch.Tensor:
    """The tokenizer input the contract defines for ``case``: [1, 3, size, size] in [-1, 1] (default settings)."""
    unit = _lanczos(reference_pixels(case, path), size)
    tensor = torch.from_numpy(unit)
    tensor = tensor.unsqueeze(0).expand(3, -1, -1) if tensor.ndim == 2 else tensor.permute(2, 0, 1)
    return (tensor.unsqueeze(0) * 2 - 1).contiguous()
