import json
import subprocess
import sys

import numpy as np
import pytest

from meditok.ar.layout import (
    ImageConstraint,
    LayoutError,
    TokenLayout,
    codes_to_token_ids,
    find_image_blocks,
    token_ids_to_codes,
)

L = TokenLayout(text_vocab_size=1000)


def test_ids_and_vocab():
    assert (L.image_token_id, L.boi_token_id, L.eoi_token_id) == (1000, 1001, 1002)
    assert L.height_token(1) == 1003 and L.width_token(1) == 1003 + 64
    assert L.image_token_base == 1003 + 128 and L.vocab_size == L.image_token_base + 8 * 4096
    assert len(L.new_token_strings()) == L.num_new_tokens
    assert L.block_length((16, 16)) == 2052  # 2048 code tokens for a 256x256 image


def test_round_trip_square_and_non_square_and_token_values():
    rng = np.random.default_rng(0)
    for grid in [(16, 16), (2, 3), (1, 1)]:
        codes = rng.integers(0, 4096, size=(8, grid[0] * grid[1]))
        ids = codes_to_token_ids(codes, L, grid)
        assert ids[0] == L.boi_token_id and ids[-1] == L.eoi_token_id
        assert ids[1] == L.height_token(grid[0]) and ids[2] == L.width_token(grid[1])
        if codes.shape[1] > 1:  # position 1, sub-codebook 5
            assert ids[3 + 8 + 5] == L.image_token_base + 5 * 4096 + codes[5, 1]
        back, g = token_ids_to_codes(ids, L)
        assert g == grid and np.array_equal(back, codes)
    codes3 = rng.integers(0, 4096, size=(8, 2, 3))
    assert codes_to_token_ids(codes3, L) == codes_to_token_ids(codes3.reshape(8, 6), L, (2, 3))


def test_torch_input():
    import torch  # a dependency of meditok-ar: missing is an error, not a skip

    codes = torch.randint(0, 4096, (8, 4))
    assert np.array_equal(token_ids_to_codes(codes_to_token_ids(codes, L), L)[0], codes.numpy())


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda ids: ids[:-1], "exactly"),
        (lambda ids: ids[1:], "expected <boi>"),
        (lambda ids: [ids[0], 5] + ids[2:], "height token"),
        (lambda ids: ids[:3] + [ids[4]] + [ids[3]] + ids[5:], "sub-codebook 0"),
        (lambda ids: ids[:-2] + [7, ids[-1]], "sub-codebook 7"),
        (lambda ids: ids[:-2] + [ids[-1]] * 2, "sub-codebook 7"),
        (lambda ids: ids[:3] + ids[11:], "not an image code"),
    ],
)
def test_malformed_sequences_raise(mutate, message):
    ids = codes_to_token_ids(np.zeros((8, 4), dtype=np.int64) + 3, L)
    with pytest.raises(LayoutError, match=message):
        token_ids_to_codes(mutate(list(ids)), L)


def test_bad_codes_raise():
    with pytest.raises(LayoutError, match="outside"):
        codes_to_token_ids(np.full((8, 4), 4096), L)
    with pytest.raises(LayoutError, match="expected"):
        codes_to_token_ids(np.zeros((7, 4), dtype=int), L)
    with pytest.raises(LayoutError, match="not a square"):
        codes_to_token_ids(np.zeros((8, 6), dtype=int), L)
    with pytest.raises(LayoutError, match="integers"):
        codes_to_token_ids(np.zeros((8, 4)), L)
    with pytest.raises(LayoutError, match="outside"):
        codes_to_token_ids(np.zeros((8, 65 * 1), dtype=int), L, (65, 1))


def test_find_blocks_in_mixed_sequence():
    a = codes_to_token_ids(np.ones((8, 4), dtype=int), L)
    b = codes_to_token_ids(np.ones((8, 6), dtype=int), L, (3, 2))
    seq = [1, 50, 60] + a + [70] + b + [2]
    assert find_image_blocks(seq, L) == [(3, 3 + len(a)), (4 + len(a), 4 + len(a) + len(b))]
    with pytest.raises(LayoutError, match="without an open"):
        find_image_blocks([1, L.eoi_token_id], L)


def test_constraint_steps():
    c = ImageConstraint(L, (1, 2), include_header=True)
    assert c.allowed(0) == (L.boi_token_id, L.boi_token_id + 1)
    assert c.allowed(2) == (L.width_token(2), L.width_token(2) + 1)
    assert c.allowed(3) == L.code_token_range(0) and c.allowed(3 + 9) == L.code_token_range(1)
    assert c.allowed(3 + 16) == (L.eoi_token_id, L.eoi_token_id + 1) and c.done(20)
    with pytest.raises(LayoutError):
        c.allowed(20)


def test_config_round_trip_and_mismatch():
    layout = TokenLayout(1000, extra={"image_tokenizer": "image_tokenizer"})
    cfg = json.loads(json.dumps({"meditok_ar": layout.to_config()}))
    back = TokenLayout.from_config(cfg)
    assert back == layout and back.extra["image_tokenizer"] == "image_tokenizer"
    cfg["meditok_ar"]["boi_token_id"] = 5
    with pytest.raises(LayoutError, match="boi_token_id"):
        TokenLayout.from_config(cfg)
    with pytest.raises(LayoutError, match="no MedITok-AR layout"):
        TokenLayout.from_config({"model_type": "llama"})


def test_layout_import_is_dependency_light():
    code = "import sys, meditok.ar.layout, meditok.ar; print('transformers' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]
