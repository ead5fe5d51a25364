import subprocess

import pytest
from train_helpers import venv_tool


@pytest.fixture(scope="session")
def assets(tmp_path_factory):
    """Real offline samples, pre-decoded into shards (small side 96), plus random stand-ins for the aux nets."""
    from meditok.data.samples import assemble_samples
    from meditok.tokenizer.training.testing import make_hf_text_standin, make_standins

    root = tmp_path_factory.mktemp("assets")
    assemble_samples(root / "samples")
    subprocess.run(
        [
            venv_tool("meditok-data"),
            "shard",
            str(root / "samples" / "manifest.jsonl"),
            "-o",
            str(root / "shards"),
            "--shard-size",
            "16",
            "--max-side",
            "96",
        ],
        check=True,
        capture_output=True,
    )
    aux = make_standins(root / "aux")
    hf = make_hf_text_standin(root / "aux" / "hf_bert")  # BiomedCLIP-layout text tower (tiny BERT + WordPiece)
    return {
        "root": root,
        "shards": str(root / "shards"),
        "manifest": str(root / "samples" / "manifest.jsonl"),
        "hf_bert": hf["folder"],
        "hf_bert_checkpoint": hf["checkpoint"],
        "hf_bert_dim": hf["output_dim"],
        **aux,
    }
