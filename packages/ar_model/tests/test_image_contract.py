"""The image-input contract, meditok-ar doors: `MedITokAR.encode_image` with the file, its bytes, and the same pixels
as PIL image / array, `answer`'s image path, and `pretokenize` over a manifest give the token ids of the independent
reference (`meditok.data.testing_contract`: pydicom / nibabel / PIL / numpy only) on six real files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from meditok.ar.codes import load_code_table
from meditok.ar.model import MedITokAR
from meditok.ar.pretokenize import pretokenize
from meditok.data import load_unit_image, read_2d
from meditok.data.testing_contract import CASES, materialize, reference_input


@pytest.fixture(scope="module")
def model(extended_dir):
    return MedITokAR.from_pretrained(extended_dir)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("contract")
    return {case: materialize(case, folder) for case in CASES}


def _expected(model, case, path) -> np.ndarray:
    tok = model.image_tokenizer
    return tok.encode(reference_input(case, path))[0].numpy()  # [8, 256]


def test_the_model_records_the_tokenizers_image_input(model, extended_dir):
    config = json.loads((extended_dir / "config.json").read_text())
    assert config["meditok_ar"]["image_input"] == model.image_tokenizer.image_input.to_dict()
    assert config["meditok_ar"]["image_input"]["resize"] == "squash"  # the reference README's default


@pytest.mark.parametrize("case", CASES)
def test_encode_image_doors_give_the_reference_ids(case, model, files):
    path = files[case]
    expected = _expected(model, case, path)
    for image in (path, str(path), path.read_bytes()):
        codes, grid = model.encode_image(image)
        assert grid == (16, 16) and np.array_equal(codes.numpy(), expected)
    unit, _ = load_unit_image(path)
    picture = Image.fromarray(unit) if unit.dtype == np.uint8 else Image.fromarray(unit, "F")
    for image in (unit, picture):
        assert np.array_equal(model.encode_image(image)[0].numpy(), expected)
    # answer() builds its prompt from encode_image(path): the image block in its prompt holds these codes.
    prompt = model.builder.question_prompt(torch.from_numpy(expected), "Describe the image.", (16, 16))
    ids = torch.as_tensor(prompt).flatten().tolist()
    # Raster order, the 8 sub-codes of a position in a row, sub-codebook k's code c at image_token_base + k*4096 + c.
    block = [model.layout.image_token_base + k * 4096 + int(code) for position in expected.T
             for k, code in enumerate(position)][:16]  # fmt: skip
    start = ids.index(model.layout.boi_token_id) + 3
    assert ids[start : start + 16] == block


def test_pretokenize_gives_the_reference_ids(model, files, tmp_path):
    manifest = tmp_path / "manifest.jsonl"
    rows = []
    for case, path in files.items():
        image = read_2d(path)  # the modality the file's tags (or folder) say, as `meditok-data index` records it
        row = {"path": str(path), "modality": image.modality, "caption": case}
        if path.name.endswith(".nii.gz"):
            row.update(kind="volume")
        rows.append(row)
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = pretokenize(manifest, tmp_path / "codes", model.image_tokenizer, chunk_size=4, batch_size=3)
    assert result["complete"] and result["skipped_rows"] == 0
    table = load_code_table(tmp_path / "codes")
    by_caption = {entry["caption"]: entry for entry in table.values()}
    for case, path in files.items():
        codes = np.asarray(by_caption[case]["codes"]).reshape(8, -1)
        assert np.array_equal(codes, _expected(model, case, path)), case
