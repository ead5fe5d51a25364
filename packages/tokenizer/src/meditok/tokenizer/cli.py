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

Inputs are checked before any weights load: a missing path is a one-line error; a directory is walked recursively for
image files; a file that cannot be read is skipped, named with its reason and counted (`--strict` stops at the first).
An image squashed (`--resize squash`) more than `SQUASH_ASPECT_WARNING` (2x) out of proportion gets one warning
(`--resize pad` / `native` keep the aspect ratio); dropped alpha is said once; a volume says which slice it gives (the
middle axial one, as `meditok.data.read_2d`), and `reconstruct` names its output `<name>_slice<i>_recon.png`.

`--volume` tokenises whole volumes instead (NIfTI, .inv3, multi-frame DICOM files and DICOM series folders, one series
per folder): every slice along `--axis` (axial by default) in batches, with a progress bar over slices; a slice that
cannot be read is skipped and said, the rest continue. `encode` writes codes [D, 8, h*w] per volume with the geometry
to undo it (`meditok.data.volumes`, format "meditok-volume-codes-v1"); `decode` writes `<name>_recon.nii.gz` with the
original affine, voxel order and size; `reconstruct` writes that volume, `<name>_recon.png` (middle axial | coronal |
sagittal slices, original above reconstruction) and `<name>_psnr.csv`, and prints the PSNR in HU (file units for MR).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from .image_files import IMAGE_SUFFIXES
from .preprocessing import RESAMPLERS, RESIZE_POLICIES, ImageInput

CODES_FORMAT = "meditok-codes-v1"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class CLIError(Exception):
    pass


def _resolve_weights(args: argparse.Namespace, attribute: str = "weights") -> None:
    """A local path stays as it is; a Hub name (`massaki75/meditok`, `org/name@rev/file`) becomes the file or
    folder in the Hugging Face cache, downloaded once here so that everything after reads a local path."""
    from .hub import resolve_weights

    option = "--weights" if attribute == "weights" and args.command not in ("info",) else attribute
    setattr(args, attribute, resolve_weights(getattr(args, attribute), option=option))


def _load_tokenizer(args: argparse.Namespace):
    from .api import MedITok

    quantize, decoder = getattr(args, "quantize", None), getattr(args, "decoder_dtype", None)
    return MedITok.from_pretrained(
        args.weights, device=args.device, dtype=DTYPES[args.dtype], quantize=quantize,
        decoder_dtype=DTYPES[decoder] if decoder else None,
    )  # fmt: skip


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


# Under `--resize squash` an image whose aspect ratio differs from the output's by more than this factor gets a warning
# (a 100x37 X-ray squashed to 256x256 is stretched 2.7x); `--resize pad` or `--resize native` keep the aspect ratio.
SQUASH_ASPECT_WARNING = 2.0


class _Report:
    """Skipped files (one line each, counted) and the notes a run prints once: squashed aspect ratios, dropped alpha."""

    def __init__(self, strict: bool) -> None:
        self.strict = strict
        self.total = 0
        self.skipped: list[str] = []
        self.squashed: list[str] = []
        self.alpha: list[str] = []

    def skip(self, reason: str) -> None:
        if self.strict:
            raise CLIError(f"{reason} (--strict: stopped at the first unreadable file)")
        self.skipped.append(reason)
        _tell(f"skipped {reason}")

    def check(self, header, pixels: np.ndarray, source, spec) -> None:
        path = header.path
        if header.has_alpha:
            if not self.alpha:
                _tell(f"note: {path} has an alpha channel ({header.mode}); alpha is dropped (the RGB/gray pixels are "
                      "tokenised as they are)")  # fmt: skip
            self.alpha.append(str(path))
        height, width = pixels.shape[:2]
        if spec.resize == "squash":
            out_h, out_w = spec.output_size
            distortion = (width / height) / (out_w / out_h)
            if max(distortion, 1 / distortion) > SQUASH_ASPECT_WARNING:
                if not self.squashed:
                    _tell(f"warning: {path} is {width}x{height} and is squashed to {out_w}x{out_h} "
                          f"({max(distortion, 1 / distortion):.1f}x out of proportion) under --resize squash; "
                          "--resize pad or --resize native keep the aspect ratio")  # fmt: skip
                self.squashed.append(str(path))
        metadata = getattr(source, "metadata", None) or {}
        if "slice" in metadata:
            _tell(f"note: {path} is a volume; using its middle {metadata.get('plane', 'axial')} slice "
                  f"(index {metadata['slice']}), as meditok.data.read_2d does")  # fmt: skip
        elif "frame" in metadata:
            _tell(f"note: {path} has several frames; using frame {metadata['frame']}, as meditok.data.read_2d does")

    def finish(self) -> None:
        if len(self.squashed) > 1:
            _tell(f"warning: {len(self.squashed)} image(s) squashed by more than {SQUASH_ASPECT_WARNING:g}x")
        if len(self.alpha) > 1:
            _tell(f"note: alpha dropped from {len(self.alpha)} image(s)")
        if self.skipped:
            _tell(f"skipped {len(self.skipped)} of {self.total} file(s) (--strict stops at the first)")


def _tell(message: str) -> None:
    """One line on stderr, above the progress bar."""
    from tqdm import tqdm

    tqdm.write(message, file=sys.stderr)


def _output_path(root: Path, name: str, tail: str) -> Path:
    """``root``/``name`` without its image suffix + ``tail``; names holding ".." or an absolute path keep their last
    part only (names in a codes file are not trusted)."""
    from pathlib import PurePosixPath

    parts = PurePosixPath(name.replace("\\", "/")).parts
    if not parts or PurePosixPath(name).is_absolute() or ".." in parts:
        parts = (PurePosixPath(name).name or "image",)
    last = parts[-1]
    for suffix in (".nii.gz", *IMAGE_SUFFIXES):
        if last.lower().endswith(suffix) and len(last) > len(suffix):
            last = last[: -len(suffix)]
            break
    else:
        last = Path(last).stem or last
    return root.joinpath(*parts[:-1], f"{last}{tail}")


def _check_inputs(args: argparse.Namespace) -> list[tuple[object, str]]:
    """Every input path and the image-input settings checked before any weights load: missing paths and directories
    without images are one-line errors; a file that fails the header check is skipped and counted (or stops the run
    under --strict). Returns [(header, name)] of the files to tokenise."""
    from .api import read_image_input
    from .image_files import ImageFileError, check_image_header, expand_inputs

    _resolve_weights(args)
    if args.output.exists() and args.output.is_dir() != (args.command == "reconstruct"):
        kind = "a directory" if args.output.is_dir() else "a file"
        raise CLIError(
            f"{args.output}: -o is {kind}; expected {'a directory' if args.command == 'reconstruct' else 'a .npz file name'}"
        )
    folder = args.output if args.command == "reconstruct" else args.output.parent
    existing = next(p for p in (folder.absolute(), *folder.absolute().parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise CLIError(
            f"{args.output}: cannot write there ({existing} is {'not a directory' if not existing.is_dir() else 'not writable'})"
        )
    try:
        files, names, ignored = expand_inputs(args.images)
    except ImageFileError as exc:
        raise CLIError(str(exc)) from None
    for directory, count in ignored.items():
        _tell(f"{directory}: {count} file(s) without an image suffix ignored")
    base = read_image_input(args.weights) if args.weights.is_dir() else ImageInput()
    base.with_overrides(**_image_overrides(args))  # a bad --size / --ct-window fails here, not after the weights load
    report = args.report
    report.total = len(files)
    checked = []
    for path, name in zip(files, names):
        try:
            checked.append((check_image_header(path), name))
        except ImageFileError as exc:
            report.skip(str(exc))
    if not checked:
        raise CLIError(f"no readable image among {len(files)} file(s)")
    return checked


def _batches(
    tok, inputs: Sequence[tuple[object, str]], args: argparse.Namespace
) -> Iterator[tuple[list, torch.Tensor]]:
    """Group consecutive images of the same prepared shape, so native-size images still batch when possible.

    Each file goes through `MedITok.prepare`'s steps (load_image, then preprocess with the model's image_input and the
    command line's overrides); a file that fails is skipped and counted (`--strict`: stops the run)."""
    from .image_files import ImageFileError, load_image_with_source
    from .preprocessing import preprocess

    spec = tok.image_input.with_overrides(**_image_overrides(args))
    report = args.report
    pending: list[tuple[tuple, torch.Tensor]] = []
    for header, name in _progress(inputs, "tokenizing"):
        path = header.path
        try:
            pixels, source = load_image_with_source(path, spec)
            tensor = preprocess(pixels, spec)
        except ImageFileError as exc:
            report.skip(str(exc))
            continue
        except (ValueError, TypeError) as exc:
            report.skip(f"{path}: {exc}")
            continue
        except MemoryError:
            report.skip(f"{path}: out of memory reading it")
            continue
        report.check(header, pixels, source, spec)
        metadata = getattr(source, "metadata", None) or {}
        item = (path, name, metadata.get("slice"))
        if pending and (len(pending) == args.batch_size or pending[0][1].shape != tensor.shape):
            yield [p for p, _ in pending], torch.cat([t for _, t in pending])
            pending = []
        pending.append((item, tensor))
    if pending:
        yield [p for p, _ in pending], torch.cat([t for _, t in pending])


def _check_volume_inputs(args: argparse.Namespace) -> list[Path]:
    """--volume: every input is one volume (a file, or a folder holding one DICOM series), checked before the weights
    load; the output path is checked as for images."""
    _resolve_weights(args)
    if args.output.exists() and args.output.is_dir() == (args.command == "encode"):
        raise CLIError(f"{args.output}: -o is {'a directory' if args.output.is_dir() else 'a file'}")
    try:
        from meditok.tokenizer.volumes import _volumes_module

        _volumes_module()
    except ImportError as exc:
        raise CLIError(str(exc)) from None
    volumes = []
    for path in args.images:
        if not path.exists():
            raise CLIError(f"{path}: no such file or directory")
        volumes.append(path)
    args.report.total = len(volumes)
    return volumes


def _encode_volumes(args: argparse.Namespace, tok, paths: list[Path]) -> list:
    """Each volume through `MedITok.encode_volume`; a volume that cannot be read is skipped (and counted), a bad
    slice is said and skipped."""
    encoded = []
    for path in paths:

        def said(index: int, reason: str, path: Path = path) -> None:
            _tell(f"skipped {path}: {args.axis} slice {index}: {reason}")

        try:
            item = tok.encode_volume(
                path, plane=args.axis, batch_size=args.batch_size, num_workers=args.workers, strict=args.strict,
                on_skip=said, **_image_overrides(args),
            )  # fmt: skip
        except ValueError as exc:
            args.report.skip(str(exc))
            continue
        item.name = path.name
        encoded.append(item)
    args.report.finish()
    if not encoded:
        raise CLIError(f"no readable volume among {args.report.total} input(s); nothing written")
    return encoded


def cmd_encode(args: argparse.Namespace) -> int:
    if args.volume:
        paths = _check_volume_inputs(args)  # first: it says when meditok-data is missing
        from meditok.data.volumes import save_volume_codes

        encoded = _encode_volumes(args, _load_tokenizer(args), paths)
        save_volume_codes(args.output, encoded)
        shapes = ", ".join(f"{v.name} {list(v.codes.shape)}" for v in encoded)
        print(f"wrote codes of {len(encoded)} volume(s) to {args.output}: {shapes}")
        return 0
    inputs = _check_inputs(args)
    tok = _load_tokenizer(args)
    arrays, names = {}, []
    for items, batch in _batches(tok, inputs, args):
        grid = (batch.shape[-2] // 16, batch.shape[-1] // 16)
        codes = tok.encode(batch).reshape(len(items), -1, *grid)
        for (_, name, _), code in zip(items, codes):
            arrays[f"codes_{len(names)}"] = code.cpu().numpy().astype(np.uint16)
            names.append(name)
    args.report.finish()
    if not names:
        raise CLIError(f"no readable image among {args.report.total} file(s); nothing written")
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


def _is_volume_codes(path: Path) -> bool:
    try:
        with np.load(path, allow_pickle=False) as data:
            return "format" in data and str(data["format"]) == "meditok-volume-codes-v1"
    except (OSError, ValueError):
        return False


def _decode_volumes(args: argparse.Namespace) -> int:
    try:
        from meditok.data.volumes import load_volume_codes
    except ImportError:
        raise CLIError(f"{args.codes}: decoding volume codes needs meditok-data (pip install meditok-data)") from None
    try:
        items = load_volume_codes(args.codes)
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    _resolve_weights(args)
    tok = _load_tokenizer(args)
    for item in items:
        try:
            rebuilt = tok.decode_volume(item, batch_size=args.batch_size)
        except ValueError as exc:
            raise CLIError(f"{args.codes} [{item.name}]: {exc}") from None
        out = rebuilt.save(_output_path(args.output, item.name, "_recon.nii.gz"))
        print(f"{item.name}: {len(item.slices)} slice(s) -> {out} (shape {list(rebuilt.voxels.shape)})")
    return 0


def cmd_decode(args: argparse.Namespace) -> int:
    from .preprocessing import to_pil

    if args.codes.is_file() and _is_volume_codes(args.codes):
        return _decode_volumes(args)
    items = load_codes(args.codes)
    _resolve_weights(args)
    tok = _load_tokenizer(args)
    args.output.mkdir(parents=True, exist_ok=True)
    for name, codes in _progress(items, "decoding"):
        try:
            image = tok.decode(torch.from_numpy(codes.astype(np.int64)).unsqueeze(0))
        except ValueError as exc:
            raise CLIError(f"{args.codes} [{name}]: {exc}") from None
        out = _output_path(args.output, name, ".png")
        out.parent.mkdir(parents=True, exist_ok=True)
        to_pil(image)[0].save(out)
    print(f"wrote {len(items)} image(s) to {args.output}")
    return 0


def _reconstruct_volumes(args: argparse.Namespace) -> int:
    from PIL import Image

    paths = _check_volume_inputs(args)  # first: it says when meditok-data is missing
    from meditok.data import read_volume
    from meditok.data.volumes import slice_psnr, triptych

    tok = _load_tokenizer(args)
    args.output.mkdir(parents=True, exist_ok=True)
    for item in _encode_volumes(args, tok, paths):
        rebuilt = tok.decode_volume(item, batch_size=args.batch_size)
        original = read_volume(Path(item.geometry.source)).voxels
        scores = slice_psnr(original, rebuilt.canonical, item.geometry)
        volume_out = rebuilt.save(_output_path(args.output, item.name, "_recon.nii.gz"))
        picture = _output_path(args.output, item.name, "_recon.png")
        Image.fromarray(triptych(original, rebuilt.canonical, item.geometry)).save(picture)
        table = _output_path(args.output, item.name, "_psnr.csv")
        rows = [f"{args.axis}_slice,psnr_db"] + [f"{i},{v:.3f}" for i, v in scores["per_slice"].items()]
        table.write_text("\n".join(rows) + "\n")
        values = list(scores["per_slice"].values())
        worst = min(scores["per_slice"], key=scores["per_slice"].get) if values else None
        print(f"{item.name}: PSNR {scores['overall']:.2f} dB in {scores['unit']} over {len(values)} {args.axis} "
              f"slice(s) (per slice {min(values):.2f}-{max(values):.2f}, worst slice {worst}) -> {volume_out}, "
              f"{picture.name}, {table.name}")  # fmt: skip
    return 0


def cmd_reconstruct(args: argparse.Namespace) -> int:
    from PIL import Image

    from .preprocessing import psnr, to_uint8

    if args.volume:
        return _reconstruct_volumes(args)
    inputs = _check_inputs(args)
    tok = _load_tokenizer(args)
    args.output.mkdir(parents=True, exist_ok=True)
    scores = []
    for items, batch in _batches(tok, inputs, args):
        recon = tok.reconstruct(batch)
        for (_, name, slice_index), original, rebuilt in zip(items, batch, recon):
            score = psnr(original.unsqueeze(0), rebuilt.unsqueeze(0))
            scores.append(score)
            side_by_side = np.concatenate([to_uint8(original), to_uint8(rebuilt)], axis=1)
            tail = "_recon.png" if slice_index is None else f"_slice{slice_index}_recon.png"
            out = _output_path(args.output, name, tail)
            out.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(side_by_side).save(out)
            print(f"{name}: PSNR {score:.2f} dB -> {out}")
    args.report.finish()
    if not scores:
        raise CLIError(f"no readable image among {args.report.total} file(s); nothing written")
    if len(scores) > 1:
        print(f"mean PSNR over {len(scores)} images: {np.mean(scores):.2f} dB")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from .api import MedITok

    _resolve_weights(args, "input")
    tok = MedITok.from_pretrained(args.input)
    tok.save_pretrained(args.output)
    print(f"converted {args.input} ({tok.config.name}, {tok.num_parameters():,} parameters) to {args.output}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from .api import MedITok

    _resolve_weights(args)
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


def cmd_push(args: argparse.Namespace) -> int:
    from .hub import push_folder

    url = push_folder(args.folder, args.repo_id, revision=args.revision, private=args.private or None,
                      commit_message=args.message)  # fmt: skip
    print(f"pushed {args.folder} to {args.repo_id}: {url}")
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
        out = export_checkpoint(checkpoint, args.output, image_size=args.image_size)
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
            "--weights",
            "-w",
            required=True,  # a str, not a Path: Path would fold the '//' of an hf:// name
            help=".pth, .safetensors or save_pretrained directory, or a Hugging Face Hub name (massaki75/meditok, "
            "org/name, org/name@revision/file.pth; needs the [hub] extra)",
        )
        p.add_argument("--device", default="cpu")
        p.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="bfloat16: see BENCHMARKS.md")
        p.add_argument("--quantize", choices=["int8"], help="dynamic int8 Linear layers on the CPU (see BENCHMARKS.md)")
        p.add_argument(
            "--decoder-dtype", choices=sorted(DTYPES), help="the decoder's dtype (bfloat16: faster decode, same codes)"
        )

    def image_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("images", nargs="+", type=Path, help="image files or directories (walked recursively)")
        p.add_argument(
            "--strict", action="store_true", help="stop at the first unreadable file (default: skip it and count it)"
        )
        # Unset flags keep the settings recorded in the weights' config.json (the reference's for a .pth).
        p.add_argument("--size", type=int, help="square side for squash/crop/pad/shorter (multiple of 16)")
        p.add_argument("--resize", choices=RESIZE_POLICIES)
        p.add_argument("--resampler", choices=sorted(RESAMPLERS))
        p.add_argument(
            "--ct-window", help="CT window preset (common, soft_tissue, lung, bone, full), LOW,HIGH or dicom"
        )
        p.add_argument("--percentiles", help="LOW,HIGH percentiles for deep grayscale (default 0.5,99.5)")
        p.add_argument("--batch-size", type=int, default=4)
        p.add_argument(
            "--volume",
            action="store_true",
            help="each input is a whole volume (NIfTI, .inv3, multi-frame DICOM, or a folder of one DICOM series): "
            "every slice along --axis is tokenised",
        )
        p.add_argument("--axis", choices=("axial", "coronal", "sagittal"), default="axial", help="with --volume")
        p.add_argument("--workers", type=int, default=0, help="DataLoader processes reading slices (with --volume)")

    p = sub.add_parser("encode", help="images -> codes.npz")
    image_options(p)
    model_options(p)
    p.add_argument("-o", "--output", type=Path, required=True)
    p.set_defaults(func=cmd_encode)

    p = sub.add_parser("decode", help="codes.npz -> PNG images (volume codes -> NIfTI volumes)")
    p.add_argument("codes", type=Path)
    model_options(p)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("-o", "--output", type=Path, required=True)
    p.set_defaults(func=cmd_decode)

    p = sub.add_parser("reconstruct", help="images -> original | reconstruction PNGs, PSNR printed")
    image_options(p)
    model_options(p)
    p.add_argument("-o", "--output", type=Path, required=True)
    p.set_defaults(func=cmd_reconstruct)

    p = sub.add_parser("convert", help="published .pth -> safetensors directory")
    p.add_argument("input", help="weights: a path or a Hugging Face Hub name (as --weights)")
    p.add_argument("output", type=Path)
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("info", help="describe a weights file")
    p.add_argument("weights", help="a path or a Hugging Face Hub name (as --weights)")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("push", help="upload a release folder to the Hugging Face Hub (needs the [hub] extra)")
    p.add_argument("folder", type=Path, help="a save_pretrained / export / convert folder")
    p.add_argument("repo_id", help="org/name on the Hub (created if absent)")
    p.add_argument("--revision", help="branch to commit to (default: main)")
    p.add_argument("--private", action="store_true", help="create the repository as private")
    p.add_argument("--message", help="commit message")
    p.set_defaults(func=cmd_push)

    p = sub.add_parser("export", help="training checkpoint -> save_pretrained directory (no DeepSpeed needed)")
    p.add_argument("checkpoint", type=Path, help="OUT/checkpoints/step-N, or OUT/checkpoints (its 'latest')")
    p.add_argument("output", type=Path)
    p.add_argument(
        "--image-size",
        type=int,
        help="record this side (multiple of 16) as the release's image_input size (default 256)",
    )
    p.set_defaults(func=cmd_export)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from .checkpoint import CheckpointError

    args = build_parser().parse_args(argv)
    args.report = _Report(getattr(args, "strict", False))
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
