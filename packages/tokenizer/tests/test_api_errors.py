import pytest
import torch


@pytest.mark.parametrize(
    ("x", "error", "message"),
    [
        (torch.zeros(1, 1, 32, 32), ValueError, r"\[B,3,H,W\], got \(1, 1, 32, 32\)"),
        (torch.zeros(1, 4, 32, 32), ValueError, "3 channels are required"),
        (torch.zeros(3, 32, 32), ValueError, "use x.unsqueeze"),
        (torch.zeros(1, 3, 40, 32), ValueError, "multiples of 16, got 40x32"),
        (torch.full((1, 3, 32, 32), float("nan")), ValueError, "NaN"),
        (torch.zeros(1, 3, 32, 32, dtype=torch.uint8), TypeError, "floating-point"),
        ([[0.0]], TypeError, "torch.Tensor"),
    ],
)
def test_bad_images_give_clear_errors(tiny, x, error, message):
    for method in (tiny.encode, tiny.embed_image, tiny.features, tiny.quantized_latents):
        with pytest.raises(error, match=message):
            method(x)


@pytest.mark.parametrize(
    ("codes", "grid", "error", "message"),
    [
        (torch.full((1, 8, 16), 4096), None, ValueError, r"\[0, 4095\], found values in \[4096, 4096\]"),
        (torch.full((1, 8, 16), -1), None, ValueError, "found values in"),
        (torch.zeros(1, 7, 16, dtype=torch.long), None, ValueError, r"shape \[B,8,L\]"),
        (torch.zeros(8, 16, dtype=torch.long), None, ValueError, r"shape \[B,8,L\]"),
        (torch.zeros(1, 8, 16), None, TypeError, "integer tensor"),
        (torch.zeros(1, 8, 24, dtype=torch.long), None, ValueError, "pass grid=\\(h, w\\)"),
        (torch.zeros(1, 8, 24, dtype=torch.long), (5, 5), ValueError, "does not hold 24 positions"),
        (torch.zeros(1, 8, 4, 6, dtype=torch.long), (6, 4), ValueError, "disagrees"),
    ],
)
def test_bad_codes_give_clear_errors(tiny, codes, grid, error, message):
    with pytest.raises(error, match=message):
        tiny.decode(codes, grid=grid)


def test_non_square_codes_decode_with_grid(tiny):
    codes = torch.randint(0, 4096, (1, 8, 24), generator=torch.Generator().manual_seed(0))
    assert tiny.decode(codes, grid=(4, 6)).shape == (1, 3, 64, 96)
    assert tiny.decode(codes, grid=(6, 4)).shape == (1, 3, 96, 64)
