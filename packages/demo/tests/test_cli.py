"""`meditok-demo`'s flags: the recipe's models as the default, one-line errors before anything loads."""

from __future__ import annotations

import shutil

import pytest

from meditok.demo import cli, core


def _resolve(argv: list[str]):
    return cli.resolve(cli.build_parser().parse_args(argv))


def test_with_no_flags_the_recipe_models_load_when_built(models, tmp_path, monkeypatch):
    run = tmp_path / "smollm2-recipe"
    shutil.copytree(models["tokenizer"], run / core.RECIPE_TOKENIZER)
    shutil.copytree(models["ar"], run / core.RECIPE_MODEL)
    monkeypatch.setattr(core, "RECIPE_RUN", run)  # the one constant (MEDITOK_DEMO_RUN at import time)
    assert _resolve([]) == (run / "tokenizer", run / "merged", None)
    # --weights replaces only the tokenizer; --server replaces the recipe's model
    assert _resolve(["--weights", str(models["tokenizer"])]) == (models["tokenizer"], run / "merged", None)
    assert _resolve(["--server", "http://127.0.0.1:1"]) == (run / "tokenizer", None, "http://127.0.0.1:1")


def test_without_the_recipe_the_ar_model_brings_its_own_tokenizer(models, tmp_path, monkeypatch):
    monkeypatch.setattr(core, "RECIPE_RUN", tmp_path / "not-built")
    weights, ar_model, server = _resolve(["--ar-model", str(models["ar"])])
    assert (weights, ar_model, server) == (models["ar"] / "image_tokenizer", models["ar"], None)


def test_errors_are_one_line_before_anything_loads(models, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(core, "RECIPE_RUN", tmp_path / "not-built")
    cases = {
        (): "no tokenizer weights: pass --weights",
        ("--weights", str(tmp_path / "missing.pth")): "missing.pth: no such file or directory (--weights)",
        ("--ar-model", str(tmp_path)): "not a MedITok-AR folder (no config.json) (--ar-model)",
        ("--weights", str(models["tokenizer"]), "--port", "70000"): "--port 70000: not a TCP port",
        ("--weights", str(models["tokenizer"]), "--server", "http://127.0.0.1:9"): "not a reachable MedITok-AR server",
    }
    for argv, expected in cases.items():
        assert cli.main(list(argv)) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("meditok-demo: error: ") and expected in err and "\n" not in err, err
    with pytest.raises(SystemExit) as stop:
        cli.main(["--ar-model", str(models["ar"]), "--server", "http://x"])
    assert stop.value.code == 2 and "not allowed with argument" in capsys.readouterr().err
