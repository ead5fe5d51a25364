"""`meditok-demo`: start MedITok Studio, a local web page.

    meditok-demo                                          # the real-LLM recipe's models, when built (core.RECIPE_RUN)
    meditok-demo --weights meditok_simple_v1.pth          # Tokenize only
    meditok-demo --weights W --ar-model merged/           # + Ask and Generate through transformers, in this process
    meditok-demo --weights W --server http://127.0.0.1:8000   # + Ask and Generate on a running `meditok-ar serve`
    meditok-demo ... --host 0.0.0.0 --port 7860

Without --weights the tokenizer is the recipe's (`runs/smollm2-recipe/tokenizer/`), else the --ar-model folder's own
`image_tokenizer/`. Paths are checked before anything loads; errors are one line (exit code 2).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from . import core

# Gradio refuses larger uploads before they reach the disk (a zipped CT series is typically tens to hundreds of MB).
MAX_UPLOAD = "1gb"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="meditok-demo", description="MedITok Studio: a local web demo")
    parser.add_argument("--weights", "-w", type=Path, help="MedITok weights: .pth, .safetensors or saved folder")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--ar-model", type=Path, help="merged MedITok-AR folder, run here through transformers")
    group.add_argument("--server", help="URL of a running `meditok-ar serve` (its OpenAI routes)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workdir", type=Path, help="where uploads are unpacked and downloads written (default: a "
                        "temporary folder)")  # fmt: skip
    return parser


def resolve(args: argparse.Namespace) -> tuple[Path, Path | None, str | None]:
    """(tokenizer weights, AR folder or None, server URL or None): the flags, else the recipe's models when built.

    Raises `core.DemoError` (one line) for a path that does not exist or when no tokenizer can be found."""
    recipe_tokenizer, recipe_model = core.recipe_paths()
    ar_model, server = args.ar_model, args.server
    if ar_model is None and server is None:
        ar_model = recipe_model
    elif ar_model is not None and not (ar_model / "config.json").exists():
        raise core.DemoError(f"{ar_model}: not a MedITok-AR folder (no config.json) (--ar-model)")
    weights = args.weights
    if weights is None:
        own = ar_model / "image_tokenizer" if ar_model is not None else None
        weights = recipe_tokenizer or (own if own is not None and own.exists() else None)
    if weights is None:
        raise core.DemoError(
            "no tokenizer weights: pass --weights (e.g. meditok_simple_v1.pth from Hugging Face massaki75/meditok), "
            f"or build the real-LLM recipe (packages/ar_model/recipes/), whose models are looked for in "
            f"{core.RECIPE_RUN}/ (MEDITOK_DEMO_RUN points elsewhere)"
        )
    if not weights.exists():
        raise core.DemoError(f"{weights}: no such file or directory (--weights)")
    if not 0 < args.port < 65536:
        raise core.DemoError(f"--port {args.port}: not a TCP port")
    return weights, ar_model, server


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # nothing leaves the machine
    try:
        weights, ar_model, server = resolve(args)
        print(f"loading the tokenizer from {weights} ...", flush=True)
        from meditok.tokenizer import MedITok

        tok = MedITok.from_pretrained(weights, device=args.device).eval()
        backend = None
        if ar_model is not None:
            print(f"loading the unified model from {ar_model} ...", flush=True)
            backend = core.LocalModel(ar_model, device=args.device)
        elif server is not None:
            print(f"connecting to {server} ...", flush=True)
            backend = core.ServerModel(server)
    except (core.DemoError, ValueError, OSError) as exc:
        print(f"meditok-demo: error: {exc}", file=sys.stderr)
        return 2
    import tempfile

    from .app import build

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="meditok-demo-"))
    page = build(tok, str(weights), backend, workdir)
    print(f"MedITok Studio: http://{args.host}:{args.port}/ (Ctrl-C stops it)", flush=True)
    page.queue(default_concurrency_limit=1)  # one model, one computation at a time; visitors wait in a queue
    page.launch(server_name=args.host, server_port=args.port, show_error=True, allowed_paths=[str(workdir)],
                quiet=True, footer_links=[], max_file_size=MAX_UPLOAD)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
