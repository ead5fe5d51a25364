"""The compact image layout (version 2): ids, input adapter, depth head, loss, training, save / load / merge, the
flat / compact mismatch error and the CLI. Generation against an uncached reference: test_compact_generation.py."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import ANSWER, CAPTION, QUESTION

from meditok.ar.compact import COMPACT_WEIGHTS, CompactConfig, compact_loss
from meditok.ar.layout import (
    LayoutError,
    TokenLayout,
    codes_to_token_ids,
    find_image_blocks,
    position_codes,
    token_ids_to_codes,
)
from meditok.ar.model import MedITokAR
from meditok.ar.sequences import IGNORE_INDEX, collate

C = TokenLayout(text_vocab_size=1000, version=2)


def test_compact_ids_blocks_and_config():
    assert C.name == "compact" and TokenLayout(1000).name == "flat"
    assert C.image_position_token_id == 1000 + 3 + 2 * 64 and C.vocab_size == C.image_position_token_id + 1
    assert len(C.new_token_strings()) == C.num_new_tokens and C.new_token_strings()[-1] == "<img_pos>"
    assert C.block_length((16, 16)) == 260 and TokenLayout(1000).block_length((16, 16)) == 2052
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 4096, size=(8, 6))
    ids = codes_to_token_ids(codes, C, (2, 3))
    assert ids == [C.boi_token_id, C.height_token(2), C.width_token(3)] + [C.image_position_token_id] * 6 + [
        C.eoi_token_id
    ]
    rows = position_codes(codes, C, (2, 3))
    assert rows.shape == (6, 8) and rows[4, 5] == codes[5, 4]  # row = image position, column = sub-codebook
    assert find_image_blocks([7] + ids + [8] + ids, C) == [(1, 11), (12, 22)]
    with pytest.raises(LayoutError, match="needs 6 <img_pos>"):
        find_image_blocks(ids[:5] + ids[6:], C)
    with pytest.raises(LayoutError, match="holds no codes"):
        token_ids_to_codes(ids, C)
    with pytest.raises(LayoutError, match="no code tokens"):
        C.code_token_range(0)
    back = TokenLayout.from_config({"meditok_ar": C.to_config()})
    assert back == C and back.version == 2
    with pytest.raises(LayoutError, match=r"layout version 3 is not supported .*1 \(flat\), 2 \(compact\)"):
        TokenLayout(1000, version=3)


def _extend(assets, **settings):
    return MedITokAR.from_pretrained(assets["llm_dir"], tokenizer=assets["image_tok_dir"], layout="compact",
                                     compact=settings or None)  # fmt: skip


@pytest.fixture(scope="module")
def compact_dir(assets):
    out = assets["root"] / "compact_extended"
    if not (out / "config.json").exists():
        _extend(assets).save_pretrained(out)
    return out


def test_adapters_sum_and_project(assets):
    sum_model, proj_model = _extend(assets), _extend(assets, input_adapter="project")
    codes = torch.randint(0, 4096, (5, 8), generator=torch.Generator().manual_seed(0))
    tables = sum_model.compact_modules.adapter.tables
    by_hand = torch.stack([sum(tables[k].weight[row[k]] for k in range(8)) for row in codes])
    with torch.no_grad():
        summed = sum_model.compact_modules.adapter(codes)
        projected = proj_model.compact_modules.adapter(codes)
    assert torch.allclose(summed, by_hand, atol=1e-6)
    # "project": the tokenizer's unit code vectors, concatenated, through the Linear
    books = [cb.normalized_codebook() for cb in assets["image_tok"].quantizer.codebooks]
    vectors = torch.cat([books[k][codes[:, k]] for k in range(8)], dim=-1)
    linear = proj_model.compact_modules.adapter.projection
    assert torch.allclose(projected, vectors @ linear.weight.T + linear.bias, atol=1e-5)
    # Both start as the same map (mean text row + the fixed orthonormal code projection), at a text row's scale.
    assert torch.allclose(summed, projected, atol=1e-4)
    text = sum_model.llm.get_input_embeddings().weight[: sum_model.layout.text_vocab_size]
    assert 0.5 < summed.norm(dim=-1).mean() / text.norm(dim=-1).mean() < 2
    assert proj_model.layout.extra["compact"]["input_adapter"] == "project"


def test_flat_and_compact_mismatch_is_a_clear_error(compact_dir, extended_dir, tmp_path):
    with pytest.raises(LayoutError) as error:
        MedITokAR.from_pretrained(compact_dir, layout="flat")
    assert str(error.value) == f"{compact_dir} is a compact (layout version 2) model, not flat (layout version 1)"
    with pytest.raises(LayoutError, match=r"is a flat \(layout version 1\) model, not compact \(layout version 2\)"):
        MedITokAR.from_pretrained(extended_dir, layout="compact")
    rc = subprocess.run([sys.executable, "-m", "meditok.ar.cli", "answer", str(extended_dir), "--image", "x"],
                        capture_output=True, text=True)  # fmt: skip
    assert rc.returncode == 2
    # A compact folder that lost its adapter / head weights says which file is missing.
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(compact_dir, broken)
    (broken / COMPACT_WEIGHTS).unlink()
    with pytest.raises(FileNotFoundError, match=COMPACT_WEIGHTS):
        MedITokAR.from_pretrained(broken)


def test_sequences_carry_codes_and_mark_learnt_positions(compact_dir, assets):
    model = MedITokAR.from_pretrained(compact_dir)
    codes, grid = assets["codes"], assets["grid"]
    img = model.layout.image_position_token_id
    gen = model.builder.generation(CAPTION, codes, grid)
    und = model.builder.conversation([{"from": "human", "value": "<image>\n" + QUESTION}, {"from": "gpt", "value": ANSWER}],
                                     [(codes, grid)])  # fmt: skip
    flipped = codes.flip(1)
    doc = model.builder.document(["Findings: ", (codes, grid), " then ", (flipped, grid), "."])
    assert gen.input_ids.count(img) == 16 and len(gen.input_ids) < 16 + 40
    assert all(lab == img for t, lab in zip(gen.input_ids, gen.labels) if t == img)  # generation: learnt
    assert all(lab == IGNORE_INDEX for t, lab in zip(und.input_ids, und.labels) if t == img)  # a given image
    assert np.array_equal(doc.image_codes, np.concatenate([codes.T.numpy(), flipped.T.numpy()]))
    batch = collate([und, doc], model.builder.pad)
    assert batch["image_codes"].shape == (48, 8)
    assert torch.equal(batch["image_codes"][16:32], codes.T)  # row-major: sequence 0's positions, then sequence 1's


def test_loss_is_text_plus_head_cross_entropy(compact_dir, assets):
    """The batched teacher-forced loss against one computed by hand: text targets from the LLM's logits, each learnt
    position's sub-codes from the depth head run step by step with its KV cache (the sampling path)."""
    model = MedITokAR.from_pretrained(compact_dir)
    modules, layout = model.compact_modules, model.layout
    seq = model.builder.document(["Findings: ", (assets["codes"], assets["grid"]), " normal."])
    batch = collate([seq], model.builder.pad)
    with torch.no_grad():
        result = compact_loss(model.llm, modules, layout, **batch)
        embeds = model.llm.get_input_embeddings()(batch["input_ids"])[0]
        rows = iter(batch["image_codes"])
        for i, t in enumerate(seq.input_ids):
            if t == layout.image_position_token_id:
                embeds[i] = sum(modules.adapter.tables[k].weight[c] for k, c in enumerate(next(rows)))
        out = model.llm(inputs_embeds=embeds[None], output_hidden_states=True)
        terms = []
        image_rows = iter(batch["image_codes"])
        for i in range(1, len(seq.input_ids)):
            if seq.labels[i] == layout.image_position_token_id:
                target = next(image_rows)
                logits = []

                def teacher(k, step_logits, target=target, logits=logits):
                    logits.append(step_logits[0])
                    return target[k : k + 1]

                modules.head.sample(out.hidden_states[-1][0, i - 1 : i], teacher)
                terms += [torch.log_softmax(lg, -1)[c] for lg, c in zip(logits, target)]
            elif seq.labels[i] != IGNORE_INDEX:
                terms.append(torch.log_softmax(out.logits[0, i - 1], -1)[seq.labels[i]])
    assert result.code_targets == 16 * 8 and result.text_targets == len(terms) - 16 * 8
    assert torch.allclose(result.loss, -torch.stack(terms).mean(), atol=1e-5)


@pytest.fixture(scope="module")
def compact_trained(assets, tmp_path_factory):
    """One image + caption + question, overfitted through `meditok-ar train`'s function with model.layout compact
    (from the plain tiny Llama: extension, LoRA, full training of adapter and head), one thread, deterministic."""
    from meditok.ar.codes import write_code_shards
    from meditok.ar.testing import train_deterministically

    root = tmp_path_factory.mktemp("compact_run")
    codes = assets["codes"].reshape(8, *assets["grid"]).numpy()
    write_code_shards([(codes, {"source": "xray0", "modality": "xray", "caption": CAPTION})], root / "codes")
    records = root / "records.jsonl"
    understanding = json.dumps({"image": "xray0", "conversations": [{"from": "human", "value": "<image>\n" + QUESTION},
                                                                     {"from": "gpt", "value": ANSWER}]})  # fmt: skip
    generation = json.dumps({"type": "generation", "prompt": CAPTION, "image": "xray0"})
    records.write_text("\n".join([generation, understanding]) + "\n")
    config = {
        "model": {"base": str(assets["llm_dir"]), "image_tokenizer": str(assets["image_tok_dir"]),
                  "out": str(root / "run"), "layout": "compact"},
        "lora": {"r": 8, "alpha": 16},
        "data": {"codes": str(root / "codes"), "records": str(records), "cond_dropout": 0.0},
        "train": {"steps": 40, "lr": 1e-2, "batch_size": 2, "seed": 0, "log_every": 0},
    }  # fmt: skip
    return {**train_deterministically(config), "config": config}


def test_training_overfits_one_image_and_answer(compact_trained, assets):
    model, losses = compact_trained["model"], compact_trained["losses"]
    assert model.layout.compact and losses[-1] < losses[0] / 5
    assert all(later < losses[0] for later in losses[5::5]), losses
    image, codes = model.generate_image(CAPTION, size=64, temperature=0.0, return_tokens=True)
    assert image.size == (64, 64) and np.array_equal(codes, assets["codes"].numpy())
    assert model.answer(assets["codes"], QUESTION, grid=assets["grid"]) == ANSWER


def test_adapter_folder_round_trip_and_merge(compact_trained, assets, tmp_path):
    adapter = compact_trained["adapter"]
    assert (adapter / COMPACT_WEIGHTS).exists() and (adapter / "adapter_config.json").exists()
    trained = compact_trained["model"]
    loaded = MedITokAR.from_pretrained(adapter)
    assert loaded.layout.compact and hasattr(loaded.llm, "peft_config")
    seq = trained.builder.generation(CAPTION, assets["codes"], assets["grid"])
    batch = collate([seq], trained.builder.pad)
    with torch.no_grad():
        reference = compact_loss(trained.llm, trained.compact_modules, trained.layout, **batch).loss
        assert torch.allclose(compact_loss(loaded.llm, loaded.compact_modules, loaded.layout, **batch).loss,
                              reference, atol=1e-6)  # fmt: skip
    out = tmp_path / "merged"
    rc = subprocess.run([sys.executable, "-m", "meditok.ar.cli", "merge", str(adapter), "-o", str(out)],
                        capture_output=True, text=True)  # fmt: skip
    assert rc.returncode == 0, rc.stderr
    merged = MedITokAR.from_pretrained(out)
    assert merged.layout.compact and not hasattr(merged.llm, "peft_config") and (out / COMPACT_WEIGHTS).exists()
    with torch.no_grad():
        assert torch.allclose(compact_loss(merged.llm, merged.compact_modules, merged.layout, **batch).loss,
                              reference, atol=1e-5)  # fmt: skip
    _, codes = merged.generate_image(CAPTION, size=64, temperature=0.0, return_tokens=True)
    assert np.array_equal(codes, assets["codes"].numpy())
    assert merged.answer(assets["codes"], QUESTION, grid=assets["grid"]) == ANSWER


def test_project_adapter_saves_and_loads(assets, tmp_path):
    model = _extend(assets, input_adapter="project", head_layers=2)
    model.save_pretrained(tmp_path / "p")
    loaded = MedITokAR.from_pretrained(tmp_path / "p")
    assert loaded.compact_modules.config == CompactConfig("project", 2, None, 8)
    assert len(loaded.compact_modules.head.layers) == 2
    seq = model.builder.generation(CAPTION, assets["codes"], assets["grid"])
    batch = collate([seq], model.builder.pad)
    with torch.no_grad():
        a = compact_loss(model.llm, model.compact_modules, model.layout, **batch).loss
        b = compact_loss(loaded.llm, loaded.compact_modules, loaded.layout, **batch).loss
    assert torch.equal(a, b)


def test_cli_extend_and_info(assets, tmp_path):
    out = tmp_path / "cx"
    cli = [sys.executable, "-m", "meditok.ar.cli"]
    rc = subprocess.run(cli + ["extend", str(assets["llm_dir"]), "--tokenizer", str(assets["image_tok_dir"]), "-o",
                               str(out), "--layout", "compact", "--input-adapter", "project"],
                        capture_output=True, text=True)  # fmt: skip
    assert rc.returncode == 0, rc.stderr
    info = json.loads(subprocess.run(cli + ["info", str(out)], capture_output=True, text=True).stdout)
    assert info["layout"] == "compact" and info["version"] == 2 and info["compact"]["input_adapter"] == "project"
    rc = subprocess.run(cli + ["extend", str(assets["llm_dir"]), "--tokenizer", str(assets["image_tok_dir"]), "-o",
                               str(tmp_path / "f"), "--head-layers", "2"], capture_output=True, text=True)  # fmt: skip
    assert rc.returncode == 2 and "belong to --layout compact" in rc.stderr
