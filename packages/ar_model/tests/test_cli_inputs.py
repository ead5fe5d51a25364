"""`meditok-ar` with a new user's mistakes: a one-line error naming the path, before any model loads (issue 12, 13)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from meditok.ar.cli import main
from meditok.ar.model import MedITokAR


@pytest.fixture()
def model_dir(tmp_path, monkeypatch):
    """A model folder that must never be loaded: loading it fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the inputs were checked")

    monkeypatch.setattr(MedITokAR, "from_pretrained", classmethod(refuse))
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    return folder


def _one_line_error(capsys, command: str) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"meditok-ar {command}: error: "), err
    assert "Traceback" not in err
    return lines[0]


def test_answer_with_a_missing_or_bad_image_fails_before_loading(tmp_path, model_dir, capsys):
    missing = tmp_path / "missing.png"
    assert main(["answer", str(model_dir), "--image", str(missing), "--question", "what?"]) == 2
    assert f"{missing}: no such file" in _one_line_error(capsys, "answer")
    assert main(["answer", str(model_dir), "--image", str(tmp_path), "--question", "what?"]) == 2
    assert f"{tmp_path}: is a directory" in _one_line_error(capsys, "answer")
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    assert main(["answer", str(model_dir), "--image", str(text), "--question", "what?"]) == 2
    assert f"{text}: not a recognised image format" in _one_line_error(capsys, "answer")
    assert main(["answer", str(tmp_path / "nomodel"), "--image", str(text), "--question", "what?"]) == 2
    assert "nomodel: no such file or directory (the model folder)" in _one_line_error(capsys, "answer")


def test_answer_with_a_nan_nifti_fails_before_loading(tmp_path, model_dir, capsys):
    import nibabel as nib

    volume = np.ones((16, 16, 3), dtype=np.float32)
    volume[2, 2, 1] = np.nan
    path = tmp_path / "nan.nii.gz"
    nib.save(nib.Nifti1Image(volume, np.eye(4)), path)
    assert main(["answer", str(model_dir), "--image", str(path), "--question", "what?"]) == 2
    assert "non-finite" in _one_line_error(capsys, "answer")


def test_other_commands_check_their_paths_first(tmp_path, model_dir, capsys):
    out = tmp_path / "no" / "such" / "dir" / "x.png"
    assert main(["generate-image", str(model_dir), "--prompt", "chest x-ray", "-o", str(out)]) == 2
    assert "(the folder of -o)" in _one_line_error(capsys, "generate-image")
    assert (
        main(["generate-image", str(model_dir), "--prompt", "p", "--size", "100", "-o", str(tmp_path / "x.png")]) == 2
    )
    assert "multiples of 16" in _one_line_error(capsys, "generate-image")
    assert main(["pretokenize", str(tmp_path / "m.jsonl"), "-o", str(tmp_path / "o"), "--tokenizer", "t"]) == 2
    assert "m.jsonl: no such file or directory (the manifest)" in _one_line_error(capsys, "pretokenize")
    assert main(["train", "--config", str(tmp_path / "c.yaml")]) == 2
    assert "c.yaml: no such file or directory (--config)" in _one_line_error(capsys, "train")
    Image.new("L", (4, 4)).save(tmp_path / "x.png")
    assert main(["merge", str(tmp_path / "x.png"), "-o", str(tmp_path / "merged")]) == 2
    assert "not a folder (the adapter folder)" in _one_line_error(capsys, "merge")
