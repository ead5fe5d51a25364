"""Hub names (meditok.tokenizer.hub) resolved offline against a Hugging Face cache built on disk, never the network."""

from __future__ import annotations

import huggingface_hub as hub
import huggingface_hub.constants  # a submodule the package's lazy top level does not load
import numpy as np
import pytest
import torch
from PIL import Image

from meditok.tokenizer import MedITok
from meditok.tokenizer.cli import main
from meditok.tokenizer.hub import (
    DEFAULT_FILENAME,
    PUBLISHED_REPO,
    HubError,
    parse_hub_name,
    release_files,
    resolve_weights,
)
from meditok.tokenizer.preprocessing import ImageInput
from meditok.tokenizer.testing import write_hub_cache


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    """An empty Hub cache with the client offline. huggingface_hub reads HF_HUB_OFFLINE / HF_HUB_CACHE into its
    constants when imported (earlier, by another test), so the constants are set as well as the variables."""
    root = tmp_path / "hub-cache"
    root.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(root))
    monkeypatch.setattr(hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub.constants, "HF_HUB_CACHE", str(root))
    return root


def _x(seed: int = 0, size: int = 32) -> torch.Tensor:
    return torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_published_repo_name_loads_its_simple_pth(cache, tiny, tiny_weights):
    # The published repository has no config.json (the Hub answered 404: a .no_exist marker) and two pickles.
    write_hub_cache(
        cache,
        PUBLISHED_REPO,
        {DEFAULT_FILENAME: tiny_weights["bare"], "meditok_ckpt_v1.pth": tiny_weights["training"]},
        absent=["config.json"],
    )
    expected = tiny.encode(_x())
    tok = MedITok.from_pretrained("massaki75/meditok")
    assert torch.equal(tok.encode(_x()), expected)
    assert tok.image_input == ImageInput()  # a .pth records none: the reference's settings
    # filename= picks the training checkpoint; the same file named inside the spec, and through hf://
    for kwargs, spec in [
        ({"filename": "meditok_ckpt_v1.pth"}, PUBLISHED_REPO),
        ({}, "hf://massaki75/meditok/meditok_ckpt_v1.pth"),
    ]:
        path = resolve_weights(spec, **kwargs)
        assert path.name == "meditok_ckpt_v1.pth" and path.read_bytes() == tiny_weights["training"].read_bytes()
        assert torch.equal(MedITok.from_pretrained(spec, **kwargs).encode(_x()), expected)


def test_revision_selects_the_snapshot(cache, tiny, tiny_weights):
    other = MedITok.from_config("tiny", seed=1)
    other_pth = tiny_weights["bare"].parent / "other.pth"
    torch.save(other.state_dict(), other_pth)
    write_hub_cache(cache, PUBLISHED_REPO, {DEFAULT_FILENAME: tiny_weights["bare"]}, absent=["config.json"])
    write_hub_cache(cache, PUBLISHED_REPO, {DEFAULT_FILENAME: other_pth}, revision="v2", absent=["config.json"])
    assert torch.equal(MedITok.from_pretrained(PUBLISHED_REPO).encode(_x()), tiny.encode(_x()))
    for tok in (
        MedITok.from_pretrained(PUBLISHED_REPO, revision="v2"),
        MedITok.from_pretrained("massaki75/meditok@v2"),
    ):
        assert torch.equal(tok.encode(_x()), other.encode(_x()))


def test_release_folder_round_trips_through_the_hub_layout(cache, tmp_path, tiny):
    # What push_to_hub would upload, placed where the Hub client would download it, loads back identically.
    tok = MedITok.from_config("tiny", seed=3)
    tok.image_input = ImageInput(size=64, resize="pad")
    folder = tok.save_pretrained(tmp_path / "release")
    files = release_files(folder, "someone/meditok-tiny")
    assert sorted(files) == ["README.md", "config.json", "model.safetensors"]
    write_hub_cache(cache, "someone/meditok-tiny", files)
    loaded = MedITok.from_pretrained("someone/meditok-tiny")
    assert torch.equal(loaded.encode(_x(1, 64)), tok.encode(_x(1, 64)))
    assert loaded.image_input == ImageInput(size=64, resize="pad")
    card = (resolve_weights("someone/meditok-tiny") / "README.md").read_text()
    assert card.startswith("---\ntags:\n- meditok\n") and "from_pretrained(" in card


def test_push_to_hub_card_names_the_repository_and_pickles_stay_home(tmp_path, tiny):
    folder = tiny.save_pretrained(tmp_path / "rel")
    (folder / "notes.pth").write_bytes(b"\x80\x02}q\x00.")  # a stray pickle is not part of a release
    (folder / "README.md").unlink()
    files = release_files(folder, "me/tok")
    assert sorted(files) == ["README.md", "config.json", "model.safetensors"]
    assert 'MedITok.from_pretrained("me/tok")' in files["README.md"].decode()
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text('{"model_type": "llama"}')
    (tmp_path / "bad" / "model.safetensors").write_bytes(b"")
    with pytest.raises(HubError, match="not a MedITok config"):
        release_files(tmp_path / "bad", "me/tok")


def test_push_offline_is_one_line(cache, tiny, tmp_path, capsys):
    with pytest.raises(HubError) as err:
        tiny.push_to_hub("me/tok")
    message = str(err.value)
    assert "\n" not in message and message.startswith("me/tok: upload of") and "HF_HUB_OFFLINE" in message
    folder = tiny.save_pretrained(tmp_path / "rel")
    assert main(["push", str(folder), "me/tok"]) == 1
    assert capsys.readouterr().err.count("\n") == 1


def test_not_cached_offline_names_the_file_and_the_local_path_remedy(cache, tmp_path, tiny):
    cases = {
        PUBLISHED_REPO: DEFAULT_FILENAME,
        "someone/absent": "config.json + model.safetensors",
        "someone/absent/weights.safetensors": "weights.safetensors",
    }
    for spec, named in cases.items():
        with pytest.raises(HubError) as err:
            MedITok.from_pretrained(spec)
        message = str(err.value)
        assert "\n" not in message, message
        assert f": {named} is not in the Hugging Face cache ({cache}) and HF_HUB_OFFLINE=1" in message
        assert "pass a local path instead" in message
    # config.json cached but the weights not: the weights are named
    write_hub_cache(cache, "someone/half", {"config.json": tiny.save_pretrained(tmp_path / "h") / "config.json"})
    with pytest.raises(HubError, match=r"^someone/half: model.safetensors is not in the Hugging Face cache"):
        MedITok.from_pretrained("someone/half")


def test_cli_weights_take_hub_names(cache, tmp_path, tiny, tiny_weights, capsys):
    write_hub_cache(cache, PUBLISHED_REPO, {DEFAULT_FILENAME: tiny_weights["bare"]}, absent=["config.json"])
    image = tmp_path / "img.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(image)
    for weights, out in [(str(tiny_weights["bare"]), "local.npz"), (PUBLISHED_REPO, "hub.npz")]:
        assert main(["encode", str(image), "--weights", weights, "--size", "32", "-o", str(tmp_path / out)]) == 0
    assert np.array_equal(np.load(tmp_path / "local.npz")["codes_0"], np.load(tmp_path / "hub.npz")["codes_0"])
    capsys.readouterr()
    assert main(["info", PUBLISHED_REPO]) == 0
    assert "config:       tiny" in capsys.readouterr().out
    assert main(["reconstruct", str(image), "--weights", "someone/absent", "-o", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("meditok: error: someone/absent: config.json + model.safetensors")


def test_local_paths_never_become_hub_names(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    assert parse_hub_name("runs/export") is None  # runs/ exists here: a missing local folder, not a repository
    assert parse_hub_name("./a/b") is None and parse_hub_name("/a/b") is None and parse_hub_name("weights.pth") is None
    assert parse_hub_name("org/name") == ("org/name", None, None)
    assert parse_hub_name("hf://org/name@v1/sub/w.pth") == ("org/name", "v1", "sub/w.pth")
    with pytest.raises(HubError, match=r"^runs/export: no such file or directory \(--weights\)$"):
        resolve_weights("runs/export", option="--weights")
    with pytest.raises(HubError, match="names revision 'v1', but revision='v2'"):
        resolve_weights("org/name@v1", revision="v2")
