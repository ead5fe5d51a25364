import json

import pytest
import torch

from meditok.ar.layout import ARCHITECTURE, TokenLayout, codes_to_token_ids
from meditok.ar.model import MedITokAR
from meditok.ar.sequences import IGNORE_INDEX, SequenceBuilder, collate


def test_extension_metadata_and_tokenizer(assets, extended_dir):
    config = json.loads((extended_dir / "config.json").read_text())
    assert config["architectures"] == [ARCHITECTURE] and config["model_type"] == "llama"
    layout = TokenLayout.from_config(config)
    assert layout.text_vocab_size == 1000 and config["vocab_size"] == layout.vocab_size
    assert config["meditok_ar"]["base_architecture"] == "LlamaForCausalLM"
    assert (extended_dir / config["meditok_ar"]["image_tokenizer"] / "config.json").exists()
    model = MedITokAR.from_pretrained(extended_dir)
    tok = model.text_tokenizer
    assert tok.convert_tokens_to_ids(["<boi>", "<img_h_4>", "<i3_17>"]) == [
        layout.boi_token_id, layout.height_token(4), layout.image_token_base + 3 * 4096 + 17]  # fmt: skip
    assert model.base_model.get_input_embeddings().weight.shape == (layout.vocab_size, 64)
    ids = model.builder.image(assets["codes"], assets["grid"])
    assert tok.decode(ids[:3]) == "<boi><img_h_4><img_w_4>"


def test_image_rows_follow_code_geometry(assets, extended_dir):
    model = MedITokAR.from_pretrained(extended_dir)
    layout = model.layout
    for weight in (model.llm.get_input_embeddings().weight, model.llm.get_output_embeddings().weight):
        text = weight[: layout.text_vocab_size]
        lo, hi = layout.code_token_range(2)
        rows = weight[lo:hi] - text.mean(0)
        book = assets["image_tok"].quantizer.codebooks[2].normalized_codebook().float()
        cos_rows = torch.nn.functional.normalize(rows[:50], dim=1) @ torch.nn.functional.normalize(rows[:50], dim=1).T
        assert torch.allclose(cos_rows, book[:50] @ book[:50].T, atol=1e-4)
        other = weight[slice(*layout.code_token_range(5))][:50] - text.mean(0)
        assert (rows[:50] @ other.T).abs().max() < 1e-3  # different sub-codebooks: orthogonal subspaces
        assert 0.5 < rows.std() / text.std() < 2.0


def test_save_load_same_logits(extended_dir, tmp_path):
    a = MedITokAR.from_pretrained(extended_dir)
    a.save_pretrained(tmp_path / "again")
    b = MedITokAR.from_pretrained(tmp_path / "again")
    ids = torch.tensor([[1, 50, 1001, 1006, 1070, 1131, 1131 + 4096]])
    assert torch.equal(a.llm(ids).logits, b.llm(ids).logits)


def test_bad_inputs(assets, tmp_path):
    with pytest.raises(ValueError, match="needs tokenizer"):
        MedITokAR.from_pretrained(assets["llm_dir"])
    config = json.loads((assets["llm_dir"] / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "model_type": "gpt2"}))
    with pytest.raises(ValueError, match="not supported"):
        MedITokAR.from_pretrained(tmp_path, tokenizer=assets["image_tok"])
    with pytest.raises(FileNotFoundError):
        MedITokAR.from_pretrained(tmp_path / "missing")


def test_sequences_and_masks(extended_dir, assets):
    model = MedITokAR.from_pretrained(extended_dir)
    b: SequenceBuilder = model.builder
    codes, grid = assets["codes"], assets["grid"]
    block = codes_to_token_ids(codes, model.layout, grid)
    conv = b.conversation(
        [{"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "A chest."}], [(codes, grid)]
    )
    start = conv.input_ids.index(model.layout.boi_token_id)
    assert conv.input_ids[start : start + len(block)] == block
    answer = b.text(" A chest.") + [b.eos]
    assert conv.labels[-len(answer) :] == answer and set(conv.labels[: -len(answer)]) == {IGNORE_INDEX}
    gen = b.generation("Chest X-ray", codes, grid)
    n_prompt = len(b.generation_prompt("Chest X-ray", grid))
    assert gen.input_ids[:n_prompt] == b.generation_prompt("Chest X-ray", grid)
    assert set(gen.labels[:n_prompt]) == {IGNORE_INDEX} and gen.labels[n_prompt:] == block[3:] + [b.eos]
    dropped = b.generation("Chest X-ray", codes, grid, drop_condition=True)
    assert dropped.input_ids[: len(b.generation_prompt("", grid))] == b.generation_prompt("", grid)
    doc = b.document(["Findings:", (codes, grid), "Lateral:", (codes, grid)])
    assert doc.labels[0] == IGNORE_INDEX and doc.labels[1:] == doc.input_ids[1:]
    assert len(__import__("meditok.ar.layout", fromlist=["x"]).find_image_blocks(doc.input_ids, model.layout)) == 2
    batch = collate([conv, gen], b.pad)
    assert batch["attention_mask"].sum() == len(conv.input_ids) + len(gen.input_ids)
    with pytest.raises(ValueError, match="max_length"):
        collate([conv], b.pad, max_length=10)
    with pytest.raises(ValueError, match="placeholders"):
        b.conversation([{"from": "human", "value": "<image> <image>"}], [(codes, grid)])
    with pytest.raises(ValueError, match="layout tokens"):
        b.text("see <boi> here")


@pytest.mark.parametrize(("family", "architecture"), [("mistral", "MistralForCausalLM"), ("qwen2", "Qwen2ForCausalLM")])
def test_other_llama_family_bases_extend_save_and_generate(assets, tmp_path, family, architecture):
    import transformers
    from transformers import AutoTokenizer

    from meditok.ar.layout import token_ids_to_codes

    text_tok = AutoTokenizer.from_pretrained(assets["llm_dir"])
    config_class = getattr(transformers, architecture.replace("ForCausalLM", "Config"))
    config = config_class(vocab_size=len(text_tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False,
                          bos_token_id=text_tok.bos_token_id, eos_token_id=text_tok.eos_token_id,
                          pad_token_id=text_tok.pad_token_id)  # fmt: skip
    torch.manual_seed(0)
    base = tmp_path / family
    getattr(transformers, architecture)(config).save_pretrained(base)
    text_tok.save_pretrained(base)
    model = MedITokAR.from_pretrained(base, tokenizer=assets["image_tok_dir"])
    model.save_pretrained(tmp_path / "extended")
    saved = json.loads((tmp_path / "extended" / "config.json").read_text())
    assert saved["model_type"] == family and saved["architectures"] == [ARCHITECTURE]
    assert saved["meditok_ar"]["base_architecture"] == architecture
    reloaded = MedITokAR.from_pretrained(tmp_path / "extended")
    ids = torch.tensor([[1, 50, model.layout.boi_token_id, model.layout.image_token_base + 7]])
    assert torch.equal(model.llm(ids).logits, reloaded.llm(ids).logits)
    image, block = reloaded.generate_image("Chest radiograph", size=(32, 16), seed=0, return_tokens=True)
    codes, grid = token_ids_to_codes(block, reloaded.layout)
    assert grid == (2, 1) and codes.shape == (8, 2) and image.size == (16, 32)


def test_hub_names_load_the_same_model(assets, extended_dir, tmp_path, monkeypatch, capsys):
    """`from_pretrained("org/name")`, `tokenizer="org/tok"` and the CLI read a Hugging Face cache built on disk, with
    the client offline (meditok.tokenizer.hub is the one resolver)."""
    import huggingface_hub.constants as hub_constants

    from meditok.ar.cli import main
    from meditok.tokenizer.testing import write_hub_cache

    cache = tmp_path / "hub-cache"
    for name, value in (("HF_HUB_OFFLINE", True), ("HF_HUB_CACHE", str(cache))):
        monkeypatch.setenv(name, "1" if value is True else value)
        monkeypatch.setattr(hub_constants, name, value)  # read by huggingface_hub at import time
    files = {p.relative_to(extended_dir).as_posix(): p for p in extended_dir.rglob("*") if p.is_file()}
    write_hub_cache(cache, "someone/meditok-ar-tiny", files)
    write_hub_cache(cache, "someone/meditok-tiny", {p.name: p for p in assets["image_tok_dir"].iterdir()})
    local = MedITokAR.from_pretrained(extended_dir)
    remote = MedITokAR.from_pretrained("someone/meditok-ar-tiny")
    ids = torch.tensor([local.builder.image(assets["codes"], assets["grid"])])
    with torch.no_grad():
        assert torch.equal(remote.llm(ids).logits, local.llm(ids).logits)
    # image_tokenizer/ came with the snapshot: the same codes for the same file
    assert torch.equal(remote.encode_image(assets["xray_path"])[0], local.encode_image(assets["xray_path"])[0])
    extended = MedITokAR.from_pretrained(assets["llm_dir"], tokenizer="someone/meditok-tiny")
    assert torch.equal(extended.llm.get_input_embeddings().weight, local.llm.get_input_embeddings().weight)
    capsys.readouterr()
    assert main(["info", str(extended_dir)]) == 0
    expected = capsys.readouterr().out
    assert main(["info", "someone/meditok-ar-tiny"]) == 0
    assert capsys.readouterr().out == expected
    assert main(["info", "someone/absent"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "someone/absent: config.json is not in the Hugging Face cache" in err


def test_saved_folder_carries_the_legacy_chat_template(assets, extended_dir):
    """A base without a chat template: the saved folder gets the legacy one (what plain `vllm serve` renders chat
    with), and the reloaded model still builds exactly the base tokenizer's legacy sequences."""
    from transformers import AutoTokenizer

    from meditok.ar.chat_format import LEGACY_TEMPLATE_FILE

    base_tok = AutoTokenizer.from_pretrained(assets["llm_dir"])
    assert not base_tok.chat_template
    config = json.loads((extended_dir / "tokenizer_config.json").read_text())
    assert config["chat_template"] == LEGACY_TEMPLATE_FILE.read_text()
    model = MedITokAR.from_pretrained(extended_dir)
    assert model.text_tokenizer.chat_template == LEGACY_TEMPLATE_FILE.read_text() and not model.builder.templated
    legacy = SequenceBuilder(model.layout, base_tok)  # the path every model trained before templates saw
    codes, grid = assets["codes"], assets["grid"]
    turns = [{"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "A chest."}]
    assert model.builder.conversation(turns, [(codes, grid)]) == legacy.conversation(turns, [(codes, grid)])
    assert model.builder.generation_prompt("Chest X-ray", grid) == legacy.generation_prompt("Chest X-ray", grid)
    rendered = model.text_tokenizer.apply_chat_template(
        [{"role": "user", "content": "Chest X-ray"}], tokenize=False, add_generation_prompt=True
    )
    assert rendered == "<s>USER: Chest X-ray ASSISTANT:"  # the legacy prompt, as vLLM's chat route renders it
