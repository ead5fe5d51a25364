"""`meditok` command line: encode, decode, reconstruct, convert, info, export.

    meditok encode scan1.png scan2.dcm --weights meditok_simple_v1.pth -o codes.npz
    meditok decode codes.npz --weights meditok_simple_v1.pth -o recon/
    meditok reconstruct cxr.png --weights meditok_simple_v1.pth -o recon/     # original | reconstruction PNGs + PSNR
    meditok convert meditok_simple_v1.pth meditok-l/                          # -> config.json + model.safetensors
    meditok info meditok-l/
    meditok export runs/stage1/checkpoints/step-00001000 meditok-stage1/  # training checkpoint -> release dir

`codes.npz` holds one uint16 array `codes_<i>` of shape [8, h, w] per image, `names` (the source file names) and
`format` ("meditok-codes-v1"). Every file goes through the image-input contract (`MedITok.prepare`): PNG/JPEG/TIFF/BMP
are always readable, DICOM and NIfTI (its middle axial slice) need `meditok-data`; `--size/--resize/--resampler/
--ct-window/--percentiles` override the settings recorded in the weights' config.json.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from .preprocessing import RESAMPLERS, RESIZE_POLICIES

CODES_FORMAT = "meditok-codes-v1"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class CLIError(Exception):
    pass


def _load_tokenizer(args: argparse.Namespace):
    from .api import MedITok

    return MedITok.from_pretrained(args.weights, device=args.device, dtype=DTYPES[args.dtype])


def _progress(items: Sequence, desc: str) -> Iterator:
    from tqdm import tqdm

    return iter(tqdm(items, desc=desc, unit="img", disable=len(items) < 2))


def _image_overrides(args: argparse.Namespace) -> dict:
    """The image-input settings given on the command line (None = the model's recorded setting)."""
    from .preprocessing import parse_ct_window

    window = parse_ct_window(args.ct_window)
    percentiles = tuple(float(v) for v in args.percentiles.split(",")) if args.percentiles else None
    return {"size": args.size, "resize": args.resize, "resampler": args.resampler, "ct_window": window,
            "percentiles": percentiles}  # fmt: skip


def _batches(tok, paths: Sequence[Path], args: argparse.Namespace) -> Iterator[tuple[list[Path], torch.Tensor]]:
    """Group consecutive images of the same prepared shape, so native-size images still batch when possible."""
    from .image_files import ImageFileError

    overrides = _image_overrides(args)
    pending: list[tuple[Path, torch.Tensor]] = []
    for path in _progress(paths, "tokenizing"):
        try:
            tensor = tok.prepare(path, **overrides)
        except ImageFileError as exc:
            raise CLIError(str(exc)) from None
        except ValueError as exc:
            raise CLIError(f"{path}: {exc}") from None
        if pending and (len(pending) == args.batch_size or pending[0][1].shape != tensor.shape):
            yield [p for p, _ in pending], torch.cat([t for _, t in pending])
            pending = []
        pending.append((path, tensor))
    if pending:
        yield [p for p, _ in pending], torch.cat([t for _, t in pending])


def cmd_encode(args: argparse.Namespace) -> int:
    tok = _load_tokenizer(args)
    arrays, names = {}, []
    for paths, batch in _batches(tok, args.images, args):
        grid = (batch.shape[-2] // 16, batch.shape[-1] // 16)
        codes = tok.encode(batch).reshape(len(paths), -1, *grid)
        for path, code in zip(paths, codes):
            arrays[f"codes_{len(names)}"] = code.cpu().numpy().astype(np.uint16)
            names.append(path.name)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.output, names=np.array(names), format=np.array(CODES_FORMAT), **arrays)
    print(f"wrote codes of {len(names)} image(s) to {args.output}")
    return 0


def load_codes(path: Path) -> list[tuple[str, np.ndarray]]:
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise CLIError(f"{path}: not a codes .npz file ({exc})") from None
    if "format" not in data or str(data["format"]) != CODES_FORMAT or "names" not in data:
        raise CLIError(
            f"{path}: not a meditok codes file (expected format {CODES_FORMAT!r}, written by `meditok encode`)"
        )
    names = [str(n) for n in data["names"]]
    return [(name, data[f"codes_{i}"]) for i, name in enumerate(names)]


def cmd_decode(args: argparse.Namespace) -> int:
    from .preprocessing import to_pil

    items = load_codes(args.codes)
    tok = _load_tokenizer(args)
    args.output.mkdir(parents=True, exist_ok=True)
    for name, codes in _progress(items, "decoding"):
        try:
            image = tok.decode(torch.from_numpy(codes.astype(np.int64)).unsqueeze(0))
        except ValueError as exc:
            raise CLIError(f"{args.codes} [{name}]: {exc}") from None
        to_pil(image)[0].save(args.output / f"{Path(name).stem}.png")
    print(f"wrote {len(items)} image(s) to {args.output}")
    return 0


def cmd_reconstruct(args: argparse.Namespace) -> int:
    from PIL import Image

    from .preprocessing import psnr, to_uint8

    tok = _load_tokenizer(args)
    args.output.mkdir(parents=True, exist_ok=True)
    scores = []
    for paths, batch in _batches(tok, args.images, args):
        recon = tok.reconstruct(batch)
        for path, original, rebuilt in zip(paths, batch, recon):
            score = psnr(original.unsqueeze(0), rebuilt.unsqueeze(0))
            scores.append(score)
            side_by_side = np.concatenate([to_uint8(original), to_uint8(rebuilt)], axis=1)
            out = args.output / f"{path.stem}_recon.png"
            Image.fromarray(side_by_side).save(out)
            print(f"{path.name}: PSNR {score:.2f} dB -> {out}")
    if len(scores) > 1:
        print(f"mean PSNR over {len(scores)} images: {np.mean(scores):.2f} dB")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from .api import MedITok

    tok = MedITok.from_pretrained(args.input)
    tok.save_pretrained(args.output)
    print(f"converted {args.input} ({tok.config.name}, {tok.num_parameters():,} parameters) to {args.output}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from .api import MedITok

    tok = MedITok.from_pretrained(args.weights)
    cfg = tok.config
    print(f"weights:      {args.weights}")
    print(f"config:       {cfg.name}")
    print(f"parameters:   {tok.num_parameters():,}")
    print(f"tensors:      {len(tok.state_dict())}")
    print(f"trunk:        width {cfg.width}, encoder depth {cfg.encoder_depth}, decoder depth {cfg.decoder_depth}")
    print(f"codebooks:    {cfg.num_codebooks} x {cfg.codebook_size} codes x {cfg.code_dim} dims")
    print(f"embedding:    {cfg.embed_dim}-d, logit scale {float(tok.logit_scale.detach().exp()):.2f}")
    usage = ", ".join(f"{u:.1f}" for u in tok.quantizer.usage_per_codebook())
    print(f"code usage %: {usage} (running statistic stored in the weights)")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    # Needs only torch: a ZeRO 0-2 checkpoint's module weights are a plain torch pickle (no DeepSpeed import).
    from .training.export import TEXT_ALIGNMENT_CONFIG, export_checkpoint, read_core_state, resolve_checkpoint

    try:
        checkpoint = resolve_checkpoint(args.checkpoint)
        core, _, state = read_core_state(checkpoint)
    except (FileNotFoundError, KeyError, RuntimeError) as exc:
        raise CLIError(f"{args.checkpoint}: cannot read the training checkpoint ({exc})") from None
    low = sorted({str(v.dtype) for v in core.values() if v.is_floating_point() and v.dtype != torch.float32})
    try:
        out = export_checkpoint(checkpoint, args.output)
    except KeyError as exc:  # e.g. a text-teacher checkpoint without its adapters
        raise CLIError(f"{args.checkpoint}: cannot export ({exc.args[0] if exc.args else exc})") from None
    print(f"exported {checkpoint} (stage {state.get('stage')}, step {state.get('step')}) to {out}")
    if (Path(out) / TEXT_ALIGNMENT_CONFIG).exists():
        print(f"with the stage-2 text adapters ({TEXT_ALIGNMENT_CONFIG}): meditok-eval zeroshot uses them")
    if low:
        print(f"note: the checkpoint's module weights are {', '.join(low)}; the export holds them in fp32")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="meditok", description="MedITok medical image tokenizer")
    sub = parser.add_subparsers(dest="command", required=True)

    def model_options(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--weights", "-w", type=Path, required=True, help=".pth, .safetensors or save_pretrained directory"
        )
        p.add_argument("--device", default="cpu")
        p.add_argument("--dtype", choices=sorted(DTYPES), default="float32")

    def image_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("images", nargs="+", type=Path)
        # Unset flags keep the settings recorded in the weights' config.json (the reference's for a .pth).
        p.add_argument("--size", type=int, help="square side for squash/crop/pad/shorter (multiple of 16)")
        p.add_argument("--resize", choices=RESIZE_POLICIES)
        p.add_argument("--resampler", choices=sorted(RESAMPLERS))
        p.add_argument(
            "--ct-window", help="CT window preset (common, soft_tissue, lung, bone, full), LOW,HIGH or dicom"
        )
        p.add_argument("--percentiles", help="LOW,HIGH percentiles for deep grayscale (default 0.5,99.5)")
        p.add_argument("--batch-size", type=int, default=4)

    p = sub.add_parser("encode", help="images -> codes.npz")
    image_options(p)
    model_options(p)
    p.add_argument("-o", "--output", type=Path, required=True)
    p.set_defaults(func=cmd_encode)

    p = sub.add_parser("decode", help="codes.npz -> PNG images")
    p.add_argument("codes", type=Path)
    model_options(p)
    p.add_argument("-o", "--output", type=Path, required=True)
    p.set_defaults(func=cmd_decode)

    p = sub.add_parser("reconstruct", help="images -> original | reconstruction PNGs, PSNR printed")
    image_options(p)
    model_options(p)
    p.add_argument("-o", "--output", type=Path, required=True)
    p.set_defaults(func=cmd_reconstruct)

    p = sub.add_parser("convert", help="published .pth -> safetensors directory")
    p.add_argument("input", type=Path)
    p.add_argument("output", type=Path)
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("info", help="describe a weights file")
    p.add_argument("weights", type=Path)
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("export", help="training checkpoint -> save_pretrained directory (no DeepSpeed needed)")
    p.add_argument("checkpoint", type=Path, help="OUT/checkpoints/step-N, or OUT/checkpoints (its 'latest')")
    p.add_argument("output", type=Path)
    p.set_defaults(func=cmd_export)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from .checkpoint import CheckpointError

    args = build_parser().parse_args(argv)
    if getattr(args, "batch_size", 1) < 1:
        print("meditok: error: --batch-size must be at least 1", file=sys.stderr)
        return 2
    try:
        return args.func(args)
    except (CLIError, CheckpointError, ValueError, TypeError) as exc:
        print(f"meditok: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
