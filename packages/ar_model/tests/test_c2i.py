"""meditok.ar.c2i, the paper's class-conditional GPT, against outputs of the reference code (github Masaaki-75/meditok,
MIT) on seeded weights: `data/c2i_reference_small.*` (how they were made: data/README.md). Expected values come from
the reference, never from this implementation."""

from __future__ import annotations

import argparse
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from c2i_reference_weights import seeded_state_dict
from PIL import Image

from meditok.ar.c2i import C2IGPT, MEDMNIST_CLASSES, C2ICheckpointError, C2IConfig, class_index, generate_c2i_images
from meditok.ar.cli import main

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def reference():
    meta = json.loads((DATA / "c2i_reference_small.json").read_text())
    with np.load(DATA / "c2i_reference_small.npz") as arrays:
        return meta, {k: torch.from_numpy(v) for k, v in arrays.items()}


@pytest.fixture(scope="module")
def small_state_dict(reference):
    meta, _ = reference
    return seeded_state_dict({k: tuple(v) for k, v in meta["state_dict_shapes"].items()})


@pytest.fixture(scope="module")
def small(reference, small_state_dict):
    meta, _ = reference
    c = meta["config"]
    config = C2IConfig(dim=c["dim"], n_layer=c["n_layer"], n_head=c["n_head"], n_output_layer=c["n_output_layer"],
                       codebook_size=c["vocab_size"] // c["num_codebooks"], num_codebooks=c["num_codebooks"],
                       num_classes=c["num_classes"], grid_size=int(c["block_size"] ** 0.5))  # fmt: skip
    return C2IGPT.from_state_dict(small_state_dict, config)


def test_teacher_forced_logits_equal_the_reference(small, reference):
    _, ref = reference
    with torch.no_grad():
        logits = small(ref["tf_labels"], ref["tf_codes"])
    assert ref["tf_logits"].std() > 1.0  # non-degenerate weights: a real comparison
    # float32: the same operations in the same order (measured difference 0); the tolerance allows another BLAS
    torch.testing.assert_close(logits, ref["tf_logits"], atol=1e-4, rtol=1e-5)


def test_greedy_codes_equal_the_reference_unguided_and_guided(small, reference):
    _, ref = reference
    labels = ref["greedy_labels"]
    plain = small.generate(labels, temperature=0)
    guided = small.generate(labels, cfg_scale=4.0, temperature=0)
    assert plain.shape == (2, 8, 64) and len(plain.unique()) > 20
    assert torch.equal(plain, ref["greedy_codes"].long())
    assert torch.equal(guided, ref["greedy_cfg_codes"].long())
    assert not torch.equal(plain, guided)  # guidance changed the codes, so the guided path was compared


def test_guided_depth_head_logits_equal_the_reference_at_every_sub_code(small, reference):
    """The KV-cached path itself: the depth head's raw logits (conditional and null-class rows) at the first
    positions (prefill and the first decoding steps) and the last one (a full backbone cache)."""
    _, ref = reference
    outputs = []
    hook = small.output.register_forward_hook(lambda module, args, out: outputs.append(out[:, -1:].clone()))
    try:
        small.generate(ref["greedy_labels"], cfg_scale=4.0, temperature=0)
    finally:
        hook.remove()
    assert len(outputs) == 8 * 64
    got = torch.stack([torch.stack(outputs[8 * p : 8 * p + 8]) for p in ref["greedy_cfg_positions"].tolist()])
    torch.testing.assert_close(got, ref["greedy_cfg_head_logits"], atol=1e-4, rtol=1e-5)


def test_seeded_sampling_draws_what_the_reference_draws(small, reference):
    """seed=s with top-k, top-p, temperature and guidance = the reference after torch.manual_seed(s) on the CPU."""
    meta, ref = reference
    runs = meta["generate"]
    for name in ("sampled_cfg", "sampled"):
        kw = dict(runs[name])
        seed = kw.pop("torch_manual_seed")
        codes = small.generate(ref["greedy_labels"], seed=seed, **kw)
        assert torch.equal(codes, ref[f"{name}_codes"].long()), name
    again = small.generate(ref["greedy_labels"], seed=7, cfg_scale=3.0, top_k=8, top_p=0.9)
    other = small.generate(ref["greedy_labels"], seed=8, cfg_scale=3.0, top_k=8, top_p=0.9)
    assert torch.equal(again, ref["sampled_cfg_codes"].long()) and not torch.equal(again, other)


def test_full_gpt_b_on_the_meta_device_has_the_reference_keys_shapes_and_size():
    with torch.device("meta"):
        model = C2IGPT(C2IConfig())  # the defaults: the published GPT-B
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    theirs = {}
    for line in (DATA / "c2i_gptb_state_dict_keys.txt").read_text().splitlines():
        key, shape = line.split("\t")
        theirs[key] = tuple(int(s) for s in shape.strip("()").split(",") if s.strip())
    assert ours == theirs
    assert sum(p.numel() for p in model.parameters()) == 142_375_168  # the reference's GPT-B parameter count
    assert C2IConfig.from_state_dict(model.state_dict()) == C2IConfig()  # the architecture read back from shapes


def test_full_gpt_b_on_seeded_weights_equals_the_reference():
    """The published architecture itself (12 heads of 64, 16x16 grid, 8 x 4096 codes): teacher-forced logits at
    positions 0, 1, 17 and 255 (first 256 codes of each sub-codebook kept in the fixture) and the first 24 positions
    of a greedy guided run (the reference's full run takes ~36 s on one CPU thread; greedy prefixes are equal)."""
    with np.load(DATA / "c2i_reference_gptb.npz") as arrays:
        ref = {k: torch.from_numpy(v) for k, v in arrays.items()}
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in C2IGPT().state_dict().items()}
    model = C2IGPT.from_state_dict(seeded_state_dict(shapes))
    with torch.no_grad():
        logits = model(ref["tf_labels"], ref["tf_codes"])[:, :, ref["tf_positions"], :256]
    torch.testing.assert_close(logits, ref["tf_logits"], atol=1e-4, rtol=1e-5)
    codes = model.generate(ref["greedy_cfg_labels"], cfg_scale=2.0, temperature=0, positions=24)
    assert codes.shape == (1, 8, 24) and len(codes.unique()) > 100
    assert torch.equal(codes, ref["greedy_cfg_codes"][:, :, :24].long())


def _save_reference_style(path: Path, state_dict: dict, **extra) -> Path:
    """A checkpoint as the reference's trainer writes it: model, optimizer state, step and its argparse args."""
    args = argparse.Namespace(gpt_model="GPT-B", num_classes=6, vocab_size=256, num_codebooks=8)
    optimizer = {"state": {0: {"step": torch.tensor(5.0), "exp_avg": torch.zeros(3)}}, "param_groups": [{"lr": 1e-4}]}
    torch.save({"model": state_dict, "optimizer": optimizer, "steps": 5, "args": args, **extra}, path)
    return path


def test_checkpoint_formats_load_to_the_same_model(tmp_path, small, small_state_dict, reference):
    """The reference sampler's formats ("model" with args, "module", bare) and safetensors; heads inferred from the
    width (64 -> 1 head) are overridden by an explicit config."""
    from safetensors.torch import save_file

    _, ref = reference
    files = [
        _save_reference_style(tmp_path / "train.pt", small_state_dict),
        tmp_path / "module.pt",
        tmp_path / "bare.pth",
        tmp_path / "w.safetensors",
    ]
    torch.save({"module": small_state_dict}, files[1])
    torch.save(small_state_dict, files[2])
    save_file(small_state_dict, files[3])
    for path in files:
        model = C2IGPT.from_checkpoint(path, config=small.config)
        with torch.no_grad():
            torch.testing.assert_close(model(ref["tf_labels"], ref["tf_codes"]), ref["tf_logits"], atol=1e-4, rtol=1e-5)
    inferred = C2IGPT.from_checkpoint(files[0]).config
    assert (inferred.dim, inferred.n_layer, inferred.n_head, inferred.codebook_size) == (64, 2, 1, 32)


class _Payload:
    def __reduce__(self):
        return (os.getcwd, ())  # harmless if it ran; weights_only loading must refuse it unrun


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # torch's note on the plain pickle below
def test_unsafe_and_wrong_checkpoints_are_refused_with_one_line_naming_the_file(tmp_path, small_state_dict):
    def refused(path: Path, *needles: str) -> None:
        with pytest.raises(C2ICheckpointError) as info:
            C2IGPT.from_checkpoint(path)
        message = str(info.value)
        assert str(path) in message and "\n" not in message and all(n in message for n in needles), message

    payload = tmp_path / "payload.pt"
    torch.save({"model": small_state_dict, "extra": _Payload()}, payload)
    refused(payload, "refused to load", "getcwd")
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint")
    refused(text, "not a readable torch file")
    raw = tmp_path / "raw.pkl"
    raw.write_bytes(pickle.dumps({"model": {"x": 1}}))
    refused(raw, "refused to load")  # a plain pickle, not torch's format
    listed = tmp_path / "list.pt"
    torch.save([1, 2], listed)
    refused(listed, "not a state dict")
    shapes = dict(small_state_dict)
    shapes["norm.weight"] = torch.ones(65)
    del shapes["output.linear_head.bias"]
    bad = _save_reference_style(tmp_path / "bad.pt", shapes)
    with pytest.raises(C2ICheckpointError, match=r"missing: output\.linear_head\.bias.*wrong shape: norm\.weight"):
        C2IGPT.from_checkpoint(
            bad, config=C2IGPT.from_checkpoint(_save_reference_style(tmp_path / "ok.pt", small_state_dict)).config
        )
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        C2IGPT.from_checkpoint(tmp_path / "missing.pt")


def test_generation_and_class_arguments_are_checked(small):
    with pytest.raises(ValueError, match=r"class labels must lie in \[0, 5\]"):
        small.generate([6])  # the null class is not a class to ask for
    with pytest.raises(ValueError, match="cfg_scale must be"):
        small.generate([0], cfg_scale=0.5)  # the reference would silently not guide
    with pytest.raises(ValueError, match="top_p"):
        small.generate([0], top_p=0)
    assert [class_index(n) for n in MEDMNIST_CLASSES] == list(range(6))
    assert (class_index("X-Ray"), class_index("5"), class_index(3)) == (2, 5, 3)
    with pytest.raises(ValueError, match=r"unknown class 'brain-mri'.*0=microscopy.*5=fundus-photography"):
        class_index("brain-mri")
    with pytest.raises(ValueError, match=r"class index 6 outside \[0, 5\]"):
        class_index(6)


@pytest.fixture(scope="module")
def cli_files(tmp_path_factory):
    """A small c2i checkpoint writing MedITok's 8 x 4096 codes on a 4x4 grid (64x64 images) in the reference's
    training format, and a tiny MedITok saved to disk."""
    from meditok.tokenizer import MedITok

    root = tmp_path_factory.mktemp("c2i")
    config = C2IConfig(dim=64, n_layer=1, n_head=1, grid_size=4)
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in C2IGPT(config).state_dict().items()}
    checkpoint = _save_reference_style(root / "c2i.pt", seeded_state_dict(shapes))
    MedITok.from_config("tiny", seed=0).save_pretrained(root / "meditok")
    return checkpoint, root / "meditok"


def test_cli_generate_image_c2i_writes_the_decoded_sample(cli_files, tmp_path, capsys):
    checkpoint, tokenizer = cli_files
    out = tmp_path / "xray.png"
    argv = ["generate-image", "--c2i", str(checkpoint), "--class", "x-ray", "--tokenizer", str(tokenizer)]
    assert main([*argv, "--size", "64", "--cfg-scale", "2", "--top-k", "50", "--seed", "3", "-o", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    image = np.asarray(Image.open(out))
    assert image.shape == (64, 64, 3) and image.std() > 1
    expected = generate_c2i_images(checkpoint, [2], tokenizer, cfg_scale=2.0, top_k=50, seed=3, size=(64, 64))[0]
    assert np.array_equal(image, np.asarray(expected))  # the API's sample, decoded by the tokenizer


def test_cli_c2i_errors_are_one_line(cli_files, tmp_path, capsys):
    checkpoint, tokenizer = cli_files
    out = str(tmp_path / "x.png")

    def error(argv: list[str]) -> str:
        assert main(["generate-image", *argv, "-o", out]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("meditok-ar generate-image: error: "), lines
        return lines[0]

    assert "unknown class 'brain-mri'" in error(["--c2i", str(checkpoint), "--class", "brain-mri"])
    assert "class index 7 outside [0, 5]" in error(["--c2i", str(checkpoint), "--class", "7", "--size", "64",
                                                    "--tokenizer", str(tokenizer)])  # fmt: skip
    assert "--c2i needs --class" in error(["--c2i", str(checkpoint)])
    assert "no such file" in error(["--c2i", str(tmp_path / "none.pt"), "--class", "0"])
    assert "writes square images" in error(["--c2i", str(checkpoint), "--class", "0", "--size", "64", "32"])
    assert "needs a model folder and --prompt" in error([])
    assert not Path(out).exists()
