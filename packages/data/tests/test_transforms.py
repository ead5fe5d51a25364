from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import dicom_file, sample

from meditok.data import MedicalImage, Preprocess, Window, apply_window, normalize_intensity, read_image
from meditok.data.transforms import (
    CT_WINDOW_PROBABILITIES,
    CT_WINDOWS,
    percentile_normalize,
    random_resized_crop_box,
    resolve_ct_window,
    rgb_to_grayscale,
    sample_ct_window,
    to_chw_tensor,
    train_augment,
    uint8_to_unit,
)


def test_apply_window_hand_values() -> None:
    hu = np.array([-1100, -1000, -500, 0, 500, 1000, 1200])
    np.testing.assert_allclose(apply_window(hu, -1000, 1000), [-1, -1, -0.5, 0, 0.5, 1, 1], atol=1e-6)
    # soft tissue (-150, 250): 50 HU is the centre, 150 HU three quarters up
    np.testing.assert_allclose(apply_window(np.array([-150, 50, 150, 250]), -150, 250), [-1, 0, 0.5, 1], atol=1e-6)
    with pytest.raises(ValueError, match="must exceed"):
        apply_window(hu, 10, 10)


def test_presets_match_the_reference() -> None:
    assert CT_WINDOWS["full"] == (-1000, 2000)
    assert CT_WINDOWS["common"] == (-1000, 1000)
    assert CT_WINDOWS["soft_tissue"] == (-150, 250)
    assert CT_WINDOWS["lung"] == (-1400, 200)
    assert CT_WINDOWS["bone"] == (-500, 1300)
    assert list(CT_WINDOW_PROBABILITIES.values()) == [0.2, 0.3, 0.3, 0.15, 0.05]
    assert resolve_ct_window("soft-tissue") == (-150, 250)
    assert resolve_ct_window((40, 400)) == (40, 400)
    assert Window.from_level_width(40, 400) == (-160, 240)
    assert Window(-160, 240).level == 40 and Window(-160, 240).width == 400
    with pytest.raises(ValueError, match="unknown CT window 'brain'"):
        resolve_ct_window("brain")


def test_random_window_frequencies() -> None:
    generator = torch.Generator().manual_seed(0)
    draws = [sample_ct_window(generator) for _ in range(20000)]
    frequency = {name: sum(d == w for d in draws) / len(draws) for name, w in CT_WINDOWS.items()}
    # p 0.5 of a random preset, otherwise "common"
    expected = {"full": 0.1, "common": 0.65, "soft_tissue": 0.15, "lung": 0.075, "bone": 0.025}
    for name, p in expected.items():
        assert frequency[name] == pytest.approx(p, abs=0.015), name


def test_percentile_and_uint8() -> None:
    values = np.arange(101, dtype=np.float32)  # percentiles equal the values
    out = percentile_normalize(values, 10, 90)
    assert out[10] == pytest.approx(-1) and out[50] == pytest.approx(0) and out[90] == pytest.approx(1)
    assert out[0] == -1 and out[100] == 1
    assert np.all(percentile_normalize(np.full((4, 4), 7.0)) == -1)
    np.testing.assert_allclose(uint8_to_unit(np.array([0, 127.5, 255])), [-1, 0, 1])


def test_channel_rules() -> None:
    gray = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert to_chw_tensor(gray).shape == (3, 2, 3)
    assert torch.equal(to_chw_tensor(gray)[2], torch.from_numpy(gray))
    four = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    assert torch.equal(to_chw_tensor(four), torch.from_numpy(np.moveaxis(four[..., :3], -1, 0)))
    with pytest.raises(ValueError, match="cannot make 3 channels"):
        to_chw_tensor(np.zeros((2, 3, 2)))


def test_eval_geometry_is_the_tokenizers_pad_and_crop() -> None:
    # Eval mode goes through the tokenizer's one geometry function; check its pad/crop against hand values.
    white = MedicalImage(pixels=np.full((100, 200), 255, np.uint8), modality="xray")
    padded = Preprocess(size=64, resize="pad")(white)
    assert padded.shape == (3, 64, 64)
    assert torch.all(padded[:, :16] == -1) and torch.all(padded[:, 48:] == -1)
    assert torch.all(padded[:, 16:48] == 1)
    grid = MedicalImage(pixels=np.arange(32 * 48, dtype=np.uint8).reshape(32, 48) % 251, modality="xray")
    cropped = Preprocess(size=32, resize="crop")(grid)  # already 32 high: a pure centre crop of columns 8..39
    expected = torch.from_numpy(grid.pixels[:, 8:40].astype(np.float32) / 127.5 - 1)
    assert torch.equal(cropped[0], expected)


def test_random_resized_crop_box_bounds() -> None:
    generator = torch.Generator().manual_seed(1)
    for _ in range(200):
        top, left, h, w = random_resized_crop_box(300, 400, (0.9, 1.0), generator=generator)
        assert 0 <= top and top + h <= 300 and 0 <= left and left + w <= 400
        assert 0.85 * 120000 <= h * w <= 1.02 * 120000
    # an elongated image falls back to the centre crop clamped to the ratio range
    assert random_resized_crop_box(10, 1000, (0.9, 1.0), generator=generator) == (0, 493, 10, 13)


def test_grayscale_weights() -> None:
    rgb = torch.tensor([1.0, 0.0, -1.0]).reshape(3, 1, 1).expand(3, 2, 2)
    expected = 0.2989 * 1 + 0.587 * 0 + 0.114 * -1
    assert torch.allclose(rgb_to_grayscale(rgb), torch.full((3, 2, 2), expected))


def test_train_augment_is_deterministic_with_generator() -> None:
    tensor = torch.rand(3, 80, 100) * 2 - 1
    a = train_augment(tensor, 64, torch.Generator().manual_seed(3))
    b = train_augment(tensor, 64, torch.Generator().manual_seed(3))
    c = train_augment(tensor, 64, torch.Generator().manual_seed(4))
    assert a.shape == (3, 64, 64) and torch.equal(a, b) and not torch.equal(a, c)


def test_ct_window_on_real_slice() -> None:
    image = read_image(dicom_file("CT_small.dcm"))
    lung = normalize_intensity(image, ct_window="lung")
    np.testing.assert_allclose(lung, apply_window(image.pixels, -1400, 200), atol=1e-6)
    dicom = read_image(dicom_file("693_UNCI.dcm"))
    np.testing.assert_allclose(
        normalize_intensity(dicom, use_dicom_window=True), apply_window(dicom.pixels, -10, 90), atol=1e-6
    )


def test_rgb_and_uint8_follow_reference() -> None:
    image = read_image(sample("fundus_retina"))
    np.testing.assert_allclose(normalize_intensity(image), image.pixels / 127.5 - 1, atol=1e-6)


def test_mr_16bit_uses_percentiles() -> None:
    image = read_image(dicom_file("MR_small.dcm"))
    out = normalize_intensity(image)
    low, high = np.percentile(image.pixels, [0.5, 99.5])
    np.testing.assert_allclose(out, apply_window(image.pixels, low, high), atol=1e-6)


def test_multiframe_needs_a_frame() -> None:
    clip = read_image(dicom_file("emri_small.dcm"))
    with pytest.raises(Exception, match="10-frame image: select one"):
        normalize_intensity(clip)


SAMPLE_NAMES = [
    "ct_head_693",
    "mr_shoulder",
    "xray_chest_pa",
    "us_doppler",
    "us_ob_palette",
    "path_ihc",
    "fundus_retina",
]


@pytest.mark.parametrize("name", SAMPLE_NAMES)
@pytest.mark.parametrize("policy", ["crop", "pad", "squash"])
def test_preprocess_every_modality(name: str, policy: str) -> None:
    image = read_image(sample(name))
    out = Preprocess(size=64, resize=policy)(image)  # type: ignore[arg-type]
    assert out.shape == (3, 64, 64) and out.dtype == torch.float32
    assert float(out.min()) >= -1 and float(out.max()) <= 1
    assert float(out.std()) > 0.05  # real content survived


def test_preprocess_train_random_window_changes_ct() -> None:
    image = read_image(dicom_file("CT_small.dcm"))
    preprocess = Preprocess(size=32, train=True)
    outs = [preprocess(image, torch.Generator().manual_seed(s)) for s in range(12)]
    assert all(o.shape == (3, 32, 32) for o in outs)
    assert len({round(float(o.mean()), 4) for o in outs}) > 3


def test_shorter_policy_keeps_aspect() -> None:
    image = MedicalImage(pixels=np.zeros((100, 300), np.uint8), modality="xray")
    assert Preprocess(size=48, resize="shorter")(image).shape == (3, 48, 144)


def test_percentile_subsampling_on_large_xray() -> None:
    image = read_image(dicom_file("RG1_UNCI.dcm"))
    values = image.pixels.astype(np.float32)
    fast = percentile_normalize(values)
    exact_low, exact_high = np.percentile(values, [0.5, 99.5])
    exact = apply_window(values, exact_low, exact_high)
    assert np.abs(fast - exact).max() < 0.01


def test_eval_mode_is_percentiles_then_pil_lanczos_squash() -> None:
    from PIL import Image

    image = read_image(dicom_file("MR_small.dcm"))  # 64x64 16-bit MR
    out = Preprocess(size=48)(image)
    low, high = np.percentile(image.pixels.astype(np.float64), [0.5, 99.5])
    unit = np.clip((image.pixels - low) / (high - low), 0, 1).astype(np.float32)
    resized = np.clip(np.asarray(Image.fromarray(unit, "F").resize((48, 48), Image.LANCZOS)), 0, 1)
    assert out.shape == (3, 48, 48)
    torch.testing.assert_close(out[0], torch.from_numpy(resized * 2 - 1), atol=1e-5, rtol=0)
    assert torch.equal(out[0], out[2])
