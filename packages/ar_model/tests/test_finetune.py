import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import ANSWER, CAPTION, IMAGE_SIZE, QUESTION

from meditok.ar.layout import token_ids_to_codes
from meditok.ar.model import MedITokAR
from meditok.ar.sequences import collate


def _batch(model, assets):
    return collate([model.builder.generation(CAPTION, assets["codes"], assets["grid"])], model.builder.pad)


@pytest.mark.parametrize("mode", ["trainable_tokens", "modules_to_save"])
def test_lora_trains_only_intended_params(extended_dir, assets, mode):
    model = MedITokAR.from_pretrained(extended_dir)
    model.add_lora(r=4, token_training=mode)
    names = [n for n, p in model.llm.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n or "token_adapter" in n or "modules_to_save" in n for n in names)
    assert any("q_proj.lora_A" in n for n in names) and any("down_proj.lora_B" in n for n in names)
    before = {n: p.detach().clone() for n, p in model.llm.named_parameters()}
    params = [p for p in model.llm.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.1)
    model.llm(**_batch(model, assets)).loss.backward()
    opt.step()
    changed = {n for n, p in model.llm.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= set(names)
    merged = model.merged().llm
    text = model.layout.text_vocab_size
    base = MedITokAR.from_pretrained(extended_dir).llm
    for attr in ("get_input_embeddings", "get_output_embeddings"):
        w0, w1 = getattr(base, attr)().weight, getattr(merged, attr)().weight
        if mode == "trainable_tokens":  # only the new rows train; modules_to_save trains a full copy
            assert torch.equal(w0[:text], w1[:text]), "text rows must not change"
        assert not torch.equal(w0[text:], w1[text:]), "image rows must train"


def _target_margins(model, sequence) -> torch.Tensor:
    """Teacher-forced: per trained target token, its logit minus the best other logit (> 0: greedy picks it)."""
    batch = collate([sequence], model.builder.pad)
    with torch.no_grad():
        logits = model.llm(**batch).logits[0, :-1].float()
    labels = batch["labels"][0, 1:]
    logits, labels = logits[labels != -100], labels[labels != -100]
    target = logits.gather(1, labels[:, None])[:, 0]
    return target - logits.scatter(1, labels[:, None], float("-inf")).max(-1).values


def test_overfit_regenerates_codes_and_answers(trained, assets):
    model = trained["model"]
    first, last = trained["losses"][:2], trained["losses"][-2:]  # batches alternate [gen, und, und], [und, und, und]
    assert last[0] < first[0] / 5 and last[1] < first[1]
    # Memorised with room to spare (~0.7 logits measured), so that greedy decoding below is exact on any machine,
    # not by a hair: every code token, the </s> after the image, each answer token and its </s>.
    understanding = model.builder.conversation(
        [{"from": "human", "value": "<image>\n" + QUESTION}, {"from": "gpt", "value": ANSWER}],
        [(assets["codes"], assets["grid"])],
    )
    for sequence in (model.builder.generation(CAPTION, assets["codes"], assets["grid"]), understanding):
        margins = _target_margins(model, sequence)
        assert margins.min() > 0.25, f"{sequence.kind}: undertrained, target margins {margins.tolist()}"
    image, block = model.generate_image(CAPTION, size=64, temperature=0.0, return_tokens=True)
    codes, grid = token_ids_to_codes(block, model.layout)
    assert grid == assets["grid"] and np.array_equal(codes, assets["codes"].numpy())
    assert image.size == (64, 64)
    assert model.answer(assets["codes"], QUESTION, grid=assets["grid"]) == ANSWER
    # The same X-ray as a file -> the image-input contract at the training size -> the trained codes -> the answer.
    assert model.answer(assets["xray_path"], QUESTION, image_input={"size": IMAGE_SIZE}) == ANSWER


def test_adapter_save_load_and_merge_same_logits(trained, assets, tmp_path):
    adapter = trained["adapter"]
    loaded = MedITokAR.from_pretrained(adapter)
    batch = _batch(loaded, assets)
    with torch.no_grad():
        reference = trained["model"].llm(**batch).logits
        unmerged = loaded.llm(**batch).logits
    assert torch.allclose(reference, unmerged, atol=1e-5)
    out = tmp_path / "merged"
    rc = subprocess.run([sys.executable, "-m", "meditok.ar.cli", "merge", str(adapter), "-o", str(out)],
                        capture_output=True, text=True)  # fmt: skip
    assert rc.returncode == 0, rc.stderr
    merged = MedITokAR.from_pretrained(out)
    assert not (out / "adapter_config.json").exists() and (out / "image_tokenizer" / "config.json").exists()
    with torch.no_grad():
        assert torch.allclose(merged.llm(**batch).logits, unmerged, atol=1e-5)
    png = tmp_path / "out.png"
    rc = subprocess.run([sys.executable, "-m", "meditok.ar.cli", "generate-image", str(out), "--prompt", CAPTION,
                         "--size", "32", "48", "--seed", "1", "--top-k", "20", "-o", str(png)],
                        capture_output=True, text=True)  # fmt: skip
    assert rc.returncode == 0, rc.stderr
    from PIL import Image

    assert Image.open(png).size == (48, 32)
    rc = subprocess.run([sys.executable, "-m", "meditok.ar.cli", "merge", str(out), "-o", str(tmp_path / "x")],
                        capture_output=True, text=True)  # fmt: skip
    assert rc.returncode == 2 and "not an adapter folder" in rc.stderr


def test_sampling_layout_cfg_and_seed(trained):
    model = trained["model"]
    layout = model.layout
    kwargs = dict(size=(32, 48), temperature=1.0, top_k=50, top_p=0.9, seed=3, return_tokens=True)
    img_a, a = model.generate_image("a knee MRI", **kwargs)
    _, b = model.generate_image("a knee MRI", **kwargs)
    _, cfg1 = model.generate_image("a knee MRI", cfg_scale=1.0, **kwargs)
    _, cfg3 = model.generate_image("a knee MRI", cfg_scale=3.0, **kwargs)
    assert a == b, "seeded sampling must be reproducible"
    assert cfg1 == a, "CFG scale 1 must equal plain conditional sampling"
    assert cfg3 != a
    for block in (a, cfg3):
        codes, grid = token_ids_to_codes(block, layout)
        assert grid == (2, 3) and codes.shape == (8, 6)
    assert img_a.size == (48, 32)
    images, blocks = model.generate_image(["x", "a longer prompt about a chest"], size=16, seed=0,
                                          cfg_scale=2.0, return_tokens=True)  # fmt: skip
    assert len(images) == 2 and all(token_ids_to_codes(bl, layout)[1] == (1, 1) for bl in blocks)
    with pytest.raises(ValueError, match="multiples of 16"):
        model.generate_image("x", size=20)


def test_hf_generate_with_layout_processor(trained):
    from transformers import LogitsProcessorList

    from meditok.ar.generation import LayoutLogitsProcessor

    model = trained["model"]
    prompt = torch.tensor([model.builder.generation_prompt("random", (2, 2))])
    proc = LayoutLogitsProcessor(model.layout, (2, 2), prompt.shape[1])
    out = model.llm.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), do_sample=True, top_k=0,
                             max_new_tokens=proc.constraint.length, logits_processor=LogitsProcessorList([proc]),
                             pad_token_id=model.builder.pad)  # fmt: skip
    block = out[0, prompt.shape[1] - 3 :].tolist()
    assert token_ids_to_codes(block, model.layout)[1] == (2, 2)
