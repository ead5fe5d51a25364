"""Compact-layout generation (KV caches in the backbone and the depth head, CFG at every sub-step, sampling options,
batches, non-square grids) against a hand-written reference that recomputes everything without a cache."""

import numpy as np
import pytest
import torch

import meditok.ar.generation as generation
from meditok.ar.model import MedITokAR


@pytest.fixture(scope="module")
def model(assets):
    """A freshly extended compact model whose depth head has large random output weights, so that greedy choices are
    decided by wide margins (cached and uncached float sums differ in the last bits)."""
    m = MedITokAR.from_pretrained(assets["llm_dir"], tokenizer=assets["image_tok_dir"], layout="compact")
    torch.manual_seed(1)
    with torch.no_grad():
        torch.nn.init.normal_(m.compact_modules.head.projections, std=1.0)
        for table in m.compact_modules.head.code_embeddings:
            torch.nn.init.normal_(table.weight, std=1.0)
    return m


def _reference(model, prompt: str, grid, cfg_scale, record):
    """Greedy, one prompt, no KV cache anywhere: the whole sequence through the backbone at every position, the whole
    prefix of sub-steps through the head at every sub-step; guidance c + (s - 1)(c - u) written out here."""
    modules, builder = model.compact_modules, model.builder
    embed = model.llm.get_input_embeddings()
    prefixes = [embed(torch.tensor(builder.generation_prompt(prompt, grid)))]
    if cfg_scale is not None:
        prefixes.append(embed(torch.tensor(builder.generation_prompt("", grid))))
    codes = []
    for _ in range(grid[0] * grid[1]):
        hidden = [
            model.llm(inputs_embeds=p[None], output_hidden_states=True).hidden_states[-1][0, -1] for p in prefixes
        ]
        steps = [[h] for h in hidden]
        chosen = []
        for k in range(8):
            logits = []
            for s in steps:
                x = modules.head._run(torch.stack(s)[None])[0, -1]
                logits.append(x @ modules.head.projections[k].T + modules.head.biases[k])
            mixed = logits[0] if cfg_scale is None else logits[0] + (cfg_scale - 1) * (logits[0] - logits[1])
            record.append(mixed)
            code = int(mixed.argmax())
            chosen.append(code)
            if k < 7:
                for s in steps:
                    s.append(modules.head.code_embeddings[k].weight[code])
        codes.append(chosen)
        position = modules.adapter(torch.tensor(chosen))
        prefixes = [torch.cat([p, position[None]]) for p in prefixes]
    return np.array(codes).T  # [8, h*w]


@pytest.mark.parametrize("cfg_scale", [None, 2.5])
def test_cached_generation_equals_uncached_reference(model, monkeypatch, cfg_scale):
    prompts, grid = ["a chest radiograph", "lateral view of the chest with a small effusion"], (2, 3)
    seen = []

    def recording(logits, *args):
        seen.append(logits)
        return original(logits, *args)

    original = generation.sample_from
    monkeypatch.setattr(generation, "sample_from", recording)
    with torch.no_grad():
        got = generation.generate_image_codes(model, prompts, grid, cfg_scale=cfg_scale, temperature=0.0)
        for i, prompt in enumerate(prompts):  # left padding in the batch must not change anything
            record = []
            want = _reference(model, prompt, grid, cfg_scale, record)
            assert got[i].shape == (8, 6) and np.array_equal(got[i], want)
            cached = torch.stack([step[i] for step in seen])  # [6 positions * 8 sub-steps, 4096]
            assert torch.allclose(cached, torch.stack(record), atol=1e-4)


def test_sampling_options_cfg_one_seeds_batches_and_grids(model):
    kwargs = dict(size=(32, 48), temperature=1.0, top_k=50, top_p=0.9, seed=3, return_tokens=True)
    image, a = model.generate_image("a knee MRI", **kwargs)
    _, b = model.generate_image("a knee MRI", **kwargs)
    _, cfg1 = model.generate_image("a knee MRI", cfg_scale=1.0, **kwargs)
    _, cfg3 = model.generate_image("a knee MRI", cfg_scale=3.0, **kwargs)
    _, other_seed = model.generate_image("a knee MRI", **{**kwargs, "seed": 4})
    assert image.size == (48, 32) and a.shape == (8, 6) and a.dtype == np.int64
    assert np.array_equal(a, b), "seeded sampling must be reproducible"
    assert np.array_equal(cfg1, a), "CFG scale 1 must equal plain conditional sampling"
    assert not np.array_equal(cfg3, a) and not np.array_equal(other_seed, a)
    # top-k 1 is greedy whatever the temperature
    _, top1 = model.generate_image("a knee MRI", size=(16, 32), temperature=5.0, top_k=1, seed=0, return_tokens=True)
    _, greedy = model.generate_image("a knee MRI", size=(16, 32), temperature=0.0, return_tokens=True)
    assert np.array_equal(top1, greedy)
    images, codes = model.generate_image(["x", "a longer prompt about a chest"], size=(48, 16), seed=0,
                                         cfg_scale=2.0, return_tokens=True)  # fmt: skip
    assert [im.size for im in images] == [(16, 48)] * 2 and all(c.shape == (8, 3) for c in codes)
    several = model.generate_image("x", size=16, num_images=3, seed=0)
    assert len(several) == 3
    with pytest.raises(ValueError, match="multiples of 16"):
        model.generate_image("x", size=20)


def test_answer_reads_the_image_through_the_adapter(model, assets):
    """Greedy answers depend on the image's codes (they enter through the adapter, not through token ids)."""
    codes, grid = assets["codes"], assets["grid"]
    prompt = model.builder.question_prompt(codes, "Describe.", grid)
    from meditok.ar.layout import position_codes

    rows = position_codes(codes, model.layout, grid)
    with torch.no_grad():
        a = generation.generate_text(model, prompt, max_new_tokens=6, image_codes=rows)
        b = generation.generate_text(model, prompt, max_new_tokens=6, image_codes=(rows + 1) % 4096)
    assert len(a) == 6 and a != b
    assert isinstance(model.answer(codes, "Describe.", grid=grid, max_new_tokens=4), str)
    assert isinstance(model.answer(assets["xray_path"], "Describe.", image_input={"size": 64}, max_new_tokens=4), str)
