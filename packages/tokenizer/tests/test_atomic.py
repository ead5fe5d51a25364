"""Atomic writes: readers never see partial files, failures leave nothing behind, saved files honour the umask."""

import os
import stat

import pytest
import torch

from meditok.tokenizer import MedITok
from meditok.tokenizer.atomic import atomic_path, write_atomic, write_text_atomic


@pytest.fixture
def umask():
    def set_mask(mask: int) -> None:
        os.umask(mask)

    old = os.umask(0o022)
    yield set_mask
    os.umask(old)


@pytest.mark.parametrize(("mask", "mode"), [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_final_file_mode_is_0666_less_umask(tmp_path, umask, mask, mode):
    umask(mask)
    path = write_text_atomic(tmp_path / "a.json", "{}")
    assert stat.S_IMODE(path.stat().st_mode) == mode
    assert path.read_text() == "{}"


def test_saved_model_is_readable_by_the_group(tmp_path, umask):
    umask(0o022)  # the common default: colleagues may read what we save
    MedITok.from_config("tiny", seed=0).save_pretrained(tmp_path / "m")
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "m").iterdir()}
    assert modes == {"README.md": 0o644, "config.json": 0o644, "model.safetensors": 0o644}


def test_failed_write_leaves_old_file_and_no_temporary(tmp_path):
    (tmp_path / "x.txt").write_text("old")

    def broken(path: str) -> None:
        with open(path, "w") as handle:
            handle.write("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_atomic(tmp_path, "x.txt", broken)
    assert (tmp_path / "x.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.txt"]


def test_atomic_path_publishes_only_at_the_end(tmp_path):
    with atomic_path(tmp_path / "w.bin") as temporary:
        temporary.write_bytes(b"\x01\x02")
        assert not (tmp_path / "w.bin").exists()
        torch.save({"a": 1}, temporary)
    assert torch.load(tmp_path / "w.bin") == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.bin"]
