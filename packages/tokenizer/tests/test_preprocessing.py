import numpy as np
import pytest
import torch
from PIL import Image

from meditok.tokenizer.preprocessing import ImageInput, preprocess, preprocess_batch, psnr, to_pil, to_uint8


def test_uint8_gray_maps_0_and_255_to_minus_one_and_one():
    gray = np.zeros((32, 32), dtype=np.uint8)
    gray[:, 16:] = 255
    x = preprocess(gray, size=32)
    assert x.shape == (1, 3, 32, 32)
    assert torch.equal(x[0, :, :, :16], torch.full((3, 32, 16), -1.0))
    assert torch.equal(x[0, :, :, 16:], torch.full((3, 32, 16), 1.0))


def test_uint8_value_mapping_is_x_over_127_5_minus_1():
    value = np.full((16, 16, 3), 51, dtype=np.uint8)
    x = preprocess(value, size=16)
    torch.testing.assert_close(x, torch.full((1, 3, 16, 16), 51 / 255 * 2 - 1))


def test_uint16_blocks_map_through_their_percentiles():
    image = np.array([[1000, 3000], [2000, 5000]], dtype=np.uint16).repeat(8, 0).repeat(8, 1)
    x = preprocess(image, size=16, resize="native")
    # 64 pixels per value: the 0.5 / 99.5 percentiles fall inside the lowest and highest blocks (1000 and 5000).
    expected = (np.array([[0, 0.5], [0.25, 1.0]]) * 2 - 1).repeat(8, 0).repeat(8, 1)
    torch.testing.assert_close(x[0, 0], torch.from_numpy(expected).float())


def test_uint16_outliers_are_clipped_at_the_percentiles():
    # A 12-bit X-ray in a 16-bit container with one hot pixel: min-max would crush the image to near black.
    rng = np.random.default_rng(3)
    image = rng.integers(100, 4096, (32, 32)).astype(np.uint16)
    image[0, 0] = 65535
    low, high = np.percentile(image.astype(np.float64), [0.5, 99.5])
    expected = np.clip((image - low) / (high - low), 0, 1) * 2 - 1
    x = preprocess(image, size=32)
    torch.testing.assert_close(x[0, 0], torch.from_numpy(expected).float(), atol=1e-5, rtol=0)
    assert float(x[0, 0, 0, 0]) == 1.0
    # Other bounds come from the settings.
    low, high = np.percentile(image.astype(np.float64), [2, 98])
    torch.testing.assert_close(
        preprocess(image, size=32, percentiles=(2, 98))[0, 0],
        torch.from_numpy(np.clip((image - low) / (high - low), 0, 1) * 2 - 1).float(),
        atol=1e-5,
        rtol=0,
    )


def test_float_pixels_must_be_in_unit_range():
    image = np.full((16, 16), 1.0, dtype=np.float32)
    image[0, 0] = 1.0004  # rounding noise is clipped
    assert float(preprocess(image, size=16).max()) == 1.0
    image[0, 0] = -3.0  # an image in [-1, 1] or in HU is a wrong input range, not something to clip silently
    with pytest.raises(ValueError, match=r"float pixels must lie in \[0, 1\], found values in \[-3, 1"):
        preprocess(image, size=16)


def test_tensor_input_is_channel_first_like_to_tensor():
    rng = np.random.default_rng(4)
    hwc = rng.random((40, 24, 3), dtype=np.float32)
    chw = torch.from_numpy(hwc).permute(2, 0, 1)
    expected = preprocess(hwc, size=32)
    assert torch.equal(preprocess(chw, size=32), expected)
    assert torch.equal(preprocess(chw.unsqueeze(0), size=32), expected)
    gray = rng.integers(0, 256, (20, 30), dtype=np.uint8)
    assert torch.equal(preprocess(torch.from_numpy(gray), size=32), preprocess(gray, size=32))
    with pytest.raises(ValueError, match="channel-first"):
        preprocess(torch.zeros(20, 30, 3), size=32)


def test_rectangular_size_and_resampler_follow_pil():
    rng = np.random.default_rng(5)
    image = rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)
    for name, method in (("lanczos", Image.LANCZOS), ("bilinear", Image.BILINEAR)):
        resized = np.asarray(Image.fromarray(image).resize((48, 32), method), dtype=np.float32)
        expected = torch.from_numpy(resized / 127.5 - 1).permute(2, 0, 1).unsqueeze(0)
        got = preprocess(image, size=(32, 48), resampler=name)
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)


def test_shorter_side_keeps_the_aspect_and_crops_to_multiples_of_16():
    image = np.full((50, 90), 200, np.uint8)
    # shorter side 50 -> 32: 90 * 32 / 50 = 57.6 -> 58 columns, centre-cropped to 48.
    assert preprocess(image, size=32, resize="shorter").shape == (1, 3, 32, 48)


def test_image_input_round_trips_and_names_bad_settings():
    spec = ImageInput(size=(128, 192), resize="crop", resampler="bicubic", ct_window=(-100, 300), percentiles=(1, 99))
    assert ImageInput.from_dict(spec.to_dict()) == spec
    assert ImageInput.from_dict(None) == ImageInput()
    assert spec.with_overrides(size=None, resize="pad").resize == "pad"
    with pytest.raises(ValueError, match=r"image_input: unknown image-input settings \['colour'\]"):
        ImageInput.from_dict({"colour": "red"})
    with pytest.raises(ValueError, match="resampler must be one of"):
        ImageInput(resampler="cubic")
    with pytest.raises(ValueError, match="high > low"):
        ImageInput(ct_window=(300, -100))
    with pytest.raises(ValueError, match="percentiles"):
        ImageInput(percentiles=(99, 1))


def test_rgba_drops_alpha_like_pil_convert():
    rgba = np.zeros((16, 16, 4), dtype=np.uint8)
    rgba[..., 0] = 200
    rgba[..., 3] = 0
    expected = preprocess(np.asarray(Image.fromarray(rgba, "RGBA").convert("RGB")), size=16)
    assert torch.equal(preprocess(rgba, size=16), expected)
    assert torch.equal(preprocess(Image.fromarray(rgba, "RGBA"), size=16), expected)


def test_squash_matches_the_reference_pil_lanczos_resize():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)
    resized = np.asarray(Image.fromarray(image).resize((32, 32), Image.LANCZOS), dtype=np.float32)
    expected = torch.from_numpy(resized / 127.5 - 1).permute(2, 0, 1).unsqueeze(0)
    torch.testing.assert_close(preprocess(image, size=32, resize="squash"), expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    ("shape", "resize", "out"),
    [
        ((40, 80), "crop", (32, 32)),
        ((40, 80), "pad", (32, 32)),
        ((40, 80), "squash", (32, 32)),
        ((40, 90), "native", (32, 80)),
    ],
)
def test_resize_policies_shapes(shape, resize, out):
    assert preprocess(np.full(shape, 128, np.uint8), size=32, resize=resize).shape[-2:] == out


def test_pad_fills_with_black_and_keeps_content_centred():
    image = np.full((16, 32), 255, np.uint8)
    x = preprocess(image, size=32, resize="pad")
    assert torch.all(x[0, :, :8] == -1) and torch.all(x[0, :, 24:] == -1)
    assert torch.all(x[0, :, 8:24] == 1)


def test_bad_arguments():
    with pytest.raises(ValueError, match="resize must be one of"):
        preprocess(np.zeros((16, 16), np.uint8), resize="stretch")
    with pytest.raises(ValueError, match="multiples of 16"):
        preprocess(np.zeros((16, 16), np.uint8), size=30)
    with pytest.raises(ValueError, match=r"got shape \(16, 16, 2\)"):
        preprocess(np.zeros((16, 16, 2), np.uint8))
    with pytest.raises(ValueError, match="NaN"):
        preprocess(np.full((16, 16), np.nan, np.float32))
    with pytest.raises(TypeError, match="a PIL image, a numpy array or a torch tensor"):
        preprocess([[1, 2]])
    with pytest.raises(ValueError, match="different shapes"):
        preprocess_batch([np.zeros((16, 16), np.uint8), np.zeros((32, 16), np.uint8)], resize="native")


def test_uint8_output_roundtrip_and_psnr():
    image = np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    x = preprocess(image, size=32)
    assert np.array_equal(to_uint8(x)[0], image)
    assert np.array_equal(np.asarray(to_pil(x[0])[0]), image)
    noisy = x + 0.1
    assert psnr(x, noisy) == pytest.approx(10 * np.log10(4 / float(((noisy.clamp(-9, 9) - x) ** 2).mean())))
    assert psnr(x, x) == float("inf")
