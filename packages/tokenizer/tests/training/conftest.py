import subprocess

import pytest


@pytest.fixture(scope="session")
def assets(tmp_path_factory):
    """Real offline samples, pre-decoded into shards (small side 96), plus random stand-ins for the aux nets."""
    from meditok.data.samples import assemble_samples
    from meditok.tokenizer.training import make_standins

    root = tmp_path_factory.mktemp("assets")
    assemble_samples(root / "samples")
    subprocess.run(
        [
            "meditok-data",
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
    return {"root": root, "shards": str(root / "shards"), "manifest": str(root / "samples" / "manifest.jsonl"), **aux}
