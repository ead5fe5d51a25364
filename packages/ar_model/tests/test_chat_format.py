"""An instruct base keeps its own chat format: SmolLM2 (ChatML) extended with MedITok tokens builds understanding and
generation sequences with its template, exactly as its tokenizer (and so vLLM's chat route) renders them; tied
embeddings take the image rows; LoRA + trainable tokens train only the new rows and the adapters."""

from __future__ import annotations

import pytest
import torch

from meditok.ar.model import MedITokAR
from meditok.ar.sequences import IGNORE_INDEX


@pytest.fixture(scope="module")
def smol(smollm2_dir, assets):
    return MedITokAR.from_pretrained(smollm2_dir, tokenizer=assets["image_tok"])


def _rendered_ids(model, messages, add_generation_prompt, block):
    """What a chat route does: the tokenizer renders the template, `<image>` (one special token) becomes the block."""
    text = model.text_tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt
    )
    ids = model.text_tokenizer(text, add_special_tokens=False)["input_ids"]
    out = []
    for token in ids:
        out += block if token == model.layout.image_token_id else [token]
    return out


def test_prompts_follow_the_bases_chatml_template(smol, assets):
    builder, layout = smol.builder, smol.layout
    assert builder.templated and "<|im_start|>" in smol.text_tokenizer.chat_template
    codes, grid = assets["codes"], assets["grid"]
    block = builder.image(codes, grid)
    question = "Which modality is this?"
    expected = _rendered_ids(smol, [{"role": "user", "content": "<image>\n" + question}], True, block)
    assert builder.question_prompt(codes, question, grid) == expected
    text = smol.text_tokenizer.decode(builder.generation_prompt("Chest radiograph", grid)[:-3])
    assert text.endswith("<|im_start|>user\nChest radiograph<|im_end|>\n<|im_start|>assistant\n")
    header = builder.generation_prompt("Chest radiograph", grid)[-3:]
    assert header == [layout.boi_token_id, layout.height_token(grid[0]), layout.width_token(grid[1])]


def test_understanding_labels_are_the_answer_and_its_end_of_turn(smol, assets):
    builder = smol.builder
    turns = [{"from": "human", "value": "<image>\nIs there a pneumothorax?"}, {"from": "gpt", "value": "No."},
             {"from": "human", "value": "Which side is the heart on?"}, {"from": "gpt", "value": " Left."}]  # fmt: skip
    seq = builder.conversation(turns, [(assets["codes"], assets["grid"])])
    messages = [{"role": "user", "content": "<image>\nIs there a pneumothorax?"}, {"role": "assistant", "content": "No."},
                {"role": "user", "content": "Which side is the heart on?"}, {"role": "assistant", "content": "Left."}]  # fmt: skip
    block = builder.image(assets["codes"], assets["grid"])
    assert seq.input_ids == _rendered_ids(smol, messages, False, block)
    learnt = smol.text_tokenizer.decode([t for t, lab in zip(seq.input_ids, seq.labels) if lab != IGNORE_INDEX])
    assert learnt == "No.<|im_end|>\nLeft.<|im_end|>\n"
    first = next(i for i, lab in enumerate(seq.labels) if lab != IGNORE_INDEX)  # the prompt up to the answer is given
    assert seq.input_ids[:first] == _rendered_ids(smol, messages[:1], True, block)
    generation = builder.generation("Chest radiograph", assets["codes"], assets["grid"])
    assert generation.input_ids[-1] == smol.text_tokenizer.convert_tokens_to_ids("<|im_end|>")


def test_tied_embeddings_take_the_image_rows_and_only_new_rows_and_adapters_train(smol, assets):
    llm = smol.base_model
    layout = smol.layout
    assert llm.config.tie_word_embeddings
    embed, head = llm.get_input_embeddings().weight, llm.get_output_embeddings().weight
    assert embed.data_ptr() == head.data_ptr() and embed.shape[0] == layout.vocab_size
    assert float(embed[layout.image_token_base :].detach().norm(dim=1).min()) > 0  # image rows initialised, not zeros
    text_rows = embed[: layout.text_vocab_size].detach().clone()
    image_rows = embed[layout.image_token_base :].detach().clone()
    smol.add_lora(r=4, alpha=8, token_training="trainable_tokens")
    trainable = {n for n, p in smol.llm.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or "trainable_tokens" in n for n in trainable)
    optimizer = torch.optim.AdamW([p for p in smol.llm.parameters() if p.requires_grad], lr=1e-2)
    seq = smol.builder.generation("Chest radiograph", assets["codes"], assets["grid"])
    ids, labels = torch.tensor([seq.input_ids]), torch.tensor([seq.labels])
    loss = smol.llm(input_ids=ids, labels=labels).loss
    loss.backward()
    optimizer.step()
    merged = smol.merged().base_model.get_input_embeddings().weight
    assert torch.equal(merged[: layout.text_vocab_size], text_rows)  # the language model's rows are untouched
    assert not torch.equal(merged[layout.image_token_base :], image_rows)  # the image rows learnt
