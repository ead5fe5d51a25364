import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

import meditok.ar.cli


def test_pretokenize_sharded_and_resumable(assets, tmp_path):
    from meditok.ar.codes import CodesDataset
    from meditok.ar.pretokenize import pretokenize
    from meditok.data import Preprocess, read_manifest, write_manifest
    from meditok.data.samples import sample_paths

    paths = (sample_paths("xray") + sample_paths("ct"))[:5]
    write_manifest([{"path": str(p), "modality": "xray" if "RG" in p.name else "ct", "caption": f"img {i}"}
                    for i, p in enumerate(paths)], tmp_path / "m.jsonl")  # fmt: skip
    out = tmp_path / "codes"
    kw = dict(size=32, chunk_size=2, world_size=2)
    first = pretokenize(tmp_path / "m.jsonl", out, assets["image_tok"], rank=0, max_chunks=1, **kw)  # interrupted
    assert first["new_chunks"] == 1 and not first["complete"] and not (out / "index.json").exists()
    assert pretokenize(tmp_path / "m.jsonl", out, assets["image_tok"], rank=1, **kw)["complete"] is False
    again = pretokenize(tmp_path / "m.jsonl", out, assets["image_tok"], rank=0, **kw)  # resume: only chunk 2
    assert again["new_chunks"] == 1 and again["complete"]
    samples = list(CodesDataset(out, grid=True))
    assert sorted(s["caption"] for s in samples) == [f"img {i}" for i in range(len(paths))]
    rows = read_manifest(tmp_path / "m.jsonl")
    with torch.no_grad():
        direct = assets["image_tok"].encode(
            Preprocess(size=32)(__import__("meditok.data", fromlist=["x"]).load_row(rows[3]))[None]
        )[0]
    got = next(s for s in samples if s["caption"] == "img 3")["codes"]
    assert got.shape == (8, 2, 2) and torch.equal(got.reshape(8, 4), direct)


def test_pretokenize_adds_seeded_augmented_views_beside_each_unchanged_image(assets, tmp_path):
    from meditok.ar.codes import load_code_table
    from meditok.ar.pretokenize import augmented_key, pretokenize
    from meditok.data import write_manifest
    from meditok.data.samples import sample_paths

    paths = sample_paths("xray")[:1] + sample_paths("ct")[:2]
    write_manifest([{"path": str(p), "modality": "ct", "caption": f"img {i}"} for i, p in enumerate(paths)],
                   tmp_path / "m.jsonl")  # fmt: skip
    runs = {}
    for name, augment, seed in (("plain", 0, 0), ("a", 2, 0), ("again", 2, 0), ("other_seed", 2, 1)):
        result = pretokenize(tmp_path / "m.jsonl", tmp_path / name, assets["image_tok"], size=32, chunk_size=2,
                             augment=augment, seed=seed)  # fmt: skip
        assert result["complete"] and result["views_per_row"] == augment + 1
        runs[name] = load_code_table(tmp_path / name)
    plain, augmented = runs["plain"], runs["a"]
    assert len(plain) == 3 and len(augmented) == 9
    changed = 0
    for key, entry in plain.items():
        assert torch.equal(augmented[augmented_key(key, 0)]["codes"], entry["codes"])  # view 0: the image itself
        views = [augmented[augmented_key(key, v)]["codes"] for v in (1, 2)]
        changed += sum(not torch.equal(v, entry["codes"]) for v in views)
        assert all(torch.equal(runs["again"][augmented_key(key, v)]["codes"], views[v - 1]) for v in (1, 2))
    assert changed >= 3  # crops / flips / rotations change the codes (a 2x2 grid of the test tokenizer can tie)
    assert any(not torch.equal(runs["other_seed"][k]["codes"], augmented[k]["codes"]) for k in augmented)


def _train_on_two_deepspeed_ranks(config: dict, tmp_path, port_seed: int) -> dict:
    """`meditok-ar train` under the deepspeed launcher, two CPU ranks; returns the train log after checking it ran."""
    (tmp_path / "cfg.json").write_text(json.dumps(config))  # YAML is a superset of JSON
    launcher = shutil.which("deepspeed", path=os.path.dirname(sys.executable)) or shutil.which("deepspeed")
    port = str(random.Random(os.getpid() + port_seed).randint(29800, 29999))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"}
    proc = subprocess.run(
        [launcher, "--num_gpus", "2", "--master_port", port, meditok.ar.cli.__file__, "train", "--config",
         str(tmp_path / "cfg.json")],
        capture_output=True, text=True, env=env, timeout=400,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    log = json.loads((Path(config["model"]["out"]) / "train_log.json").read_text())
    assert log["world_size"] == 2 and log["deepspeed"] and len(log["losses"]) == 2
    return log


def test_deepspeed_launcher_two_ranks(assets, extended_dir, tmp_path):
    from meditok.ar.codes import write_code_shards
    from meditok.ar.model import MedITokAR

    codes = assets["codes"].reshape(8, *assets["grid"]).numpy()
    write_code_shards([(codes, {"source": f"x{i}", "caption": f"chest {i}"}) for i in range(2)], tmp_path / "codes")
    config = {
        "model": {"base": str(extended_dir), "out": str(tmp_path / "run")},
        "lora": {"r": 4, "alpha": 8},
        "data": {"codes": str(tmp_path / "codes")},
        "train": {"steps": 2, "lr": 1e-3, "batch_size": 1, "log_every": 1},
    }
    log = _train_on_two_deepspeed_ranks(config, tmp_path, port_seed=0)
    model = MedITokAR.from_pretrained(tmp_path / "run" / "adapter")
    assert hasattr(model.llm, "peft_config") and np.isfinite(log["losses"]).all()


def test_deepspeed_launcher_two_ranks_trains_a_compact_model(assets, tmp_path):
    """A plain LLM extended to the compact layout inside the launched job (rank 0 writes the base, the others wait),
    LoRA + the input adapter and depth head trained by ZeRO-2 over two ranks, saved beside the adapter."""
    from safetensors.torch import load_file

    from meditok.ar.codes import write_code_shards
    from meditok.ar.compact import COMPACT_WEIGHTS
    from meditok.ar.model import MedITokAR

    codes = assets["codes"].reshape(8, *assets["grid"]).numpy()
    write_code_shards([(codes, {"source": f"x{i}", "caption": f"chest {i}"}) for i in range(2)], tmp_path / "codes")
    config = {
        "model": {"base": str(assets["llm_dir"]), "image_tokenizer": str(assets["image_tok_dir"]),
                  "out": str(tmp_path / "run"), "layout": "compact"},
        "lora": {"r": 4, "alpha": 8},
        "data": {"codes": str(tmp_path / "codes")},
        "train": {"steps": 2, "lr": 1e-2, "batch_size": 1, "log_every": 1},
    }  # fmt: skip
    log = _train_on_two_deepspeed_ranks(config, tmp_path, port_seed=1)
    assert np.isfinite(log["losses"]).all()
    before = load_file(tmp_path / "run" / "base" / COMPACT_WEIGHTS)  # written once, by rank 0, at extension
    after = load_file(tmp_path / "run" / "adapter" / COMPACT_WEIGHTS)
    assert before.keys() == after.keys()
    assert all(torch.isfinite(t).all() for t in after.values())
    assert any(not torch.equal(before[k], after[k]) for k in before)  # the adapter / head were trained
    model = MedITokAR.from_pretrained(tmp_path / "run" / "adapter")
    assert model.layout.compact and hasattr(model.llm, "peft_config")
