"""``meditok-data``: index a tree into a manifest, pack a manifest into shards, assemble the real samples, inspect a file."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from meditok.data.errors import MedicalImageError


def _cmd_index(args: argparse.Namespace) -> int:
    from meditok.data.manifest import ScanStats, index_directory, write_manifest

    stats = ScanStats()
    rows = index_directory(
        args.directory,
        per=args.per,
        plane=args.plane,
        slice_step=args.slice_step,
        modality=args.modality,
        strict=args.strict,
        progress=not args.quiet,
        stats=stats,
    )
    count = write_manifest(_relative_to_manifest(rows, args.output), args.output)
    print(f"{count} rows from {stats.attempted - stats.skipped} files → {args.output}; {stats.summary()} files")
    return 0


def _relative_to_manifest(rows, manifest: Path):
    """Relative rows are resolved against the manifest's folder when read (read_manifest), but the walk yields them
    relative to the current directory: rewrite them relative to the manifest's folder when they lie under it, else
    as absolute paths (a `../` row would be refused as outside the data root by meditok-eval)."""
    import dataclasses
    import os

    base = manifest.absolute().parent
    for row in rows:
        path = Path(row.path)
        if not path.is_absolute():
            path = Path(os.path.abspath(path))
            inside = path.is_relative_to(base)
            row = dataclasses.replace(row, path=str(path.relative_to(base) if inside else path))
        yield row


def _cmd_shard(args: argparse.Namespace) -> int:
    from meditok.data.manifest import ScanStats, read_manifest
    from meditok.data.shards import write_shards

    stats = ScanStats()
    index = write_shards(
        read_manifest(args.manifest),
        args.output,
        shard_size=args.shard_size,
        max_side=args.max_side,
        strict=args.strict,
        resume=args.resume,
        progress=not args.quiet,
        stats=stats,
    )
    print(f"{index.total} samples in {len(index.shards)} shards → {args.output}; {stats.summary()}")
    return 0


def _cmd_samples(args: argparse.Namespace) -> int:
    from meditok.data.samples import assemble_samples, missing_modalities, missing_sources

    manifest = assemble_samples(
        args.output,
        dermoscopy_limit=args.dermoscopy_limit,
        slices_per_volume=args.slices_per_volume,
        frames_per_clip=args.frames_per_clip,
        require_all=args.strict,
        progress=not args.quiet,
    )
    rows = [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["modality"]] = counts.get(row["modality"], 0) + 1
    print(f"{len(rows)} images → {manifest}: " + ", ".join(f"{m} {n}" for m, n in sorted(counts.items())))
    for hint in missing_sources():
        print(f"missing: {hint}", file=sys.stderr)
    if missing_modalities():
        print(f"no samples for: {', '.join(missing_modalities())}", file=sys.stderr)
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from meditok.data.readers import file_kind, read_image, read_volume, regular_file

    kind = file_kind(regular_file(args.path))
    if kind in ("nifti", "dicom_series", "inv3"):
        volume = read_volume(args.path)
        info = {"kind": kind, "modality": volume.modality, "shape": volume.shape, "spacing": volume.spacing}
        values = volume.voxels
    else:
        image = read_image(args.path)
        info = {"kind": kind, "modality": image.modality, "shape": list(image.pixels.shape), "frames": image.num_frames}
        info.update({"spacing": image.spacing, "window": image.window})
        values = image.pixels
    info.update({"dtype": str(values.dtype), "min": float(values.min()), "max": float(values.max())})
    print(json.dumps(info, default=str))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="meditok-data", description=__doc__)
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", required=True)

    index = sub.add_parser("index", help="scan DIR (DICOM, NIfTI, images, MedMNIST NPZ) into a JSON-lines manifest")
    index.add_argument("directory", type=Path)
    index.add_argument("-o", "--output", type=Path, required=True)
    index.add_argument(
        "--per", choices=["slice", "volume"], default="slice", help="rows per volume slice/frame, or one per volume"
    )
    index.add_argument("--plane", choices=["axial", "coronal", "sagittal"], default="axial")
    index.add_argument("--slice-step", type=int, default=1, help="keep every k-th slice/frame")
    index.add_argument("--modality", help="force a modality (otherwise DICOM tags, then folder names)")
    index.add_argument("--strict", action="store_true", help="stop at the first unreadable file")
    index.set_defaults(func=_cmd_index)

    shard = sub.add_parser("shard", help="decode a manifest (.jsonl or reference .csv) into WebDataset tar shards")
    shard.add_argument("manifest", type=Path)
    shard.add_argument("-o", "--output", type=Path, required=True)
    shard.add_argument("--shard-size", type=int, default=1000)
    shard.add_argument("--max-side", type=int, default=None, help="downscale so the longer side is at most this")
    shard.add_argument(
        "--resume", action="store_true", help="continue an interrupted job after its last complete shard"
    )
    shard.add_argument("--strict", action="store_true")
    shard.set_defaults(func=_cmd_shard)

    samples = sub.add_parser("samples", help="assemble the offline real sample images with a manifest")
    samples.add_argument("-o", "--output", type=Path, required=True)
    samples.add_argument("--dermoscopy-limit", type=int, default=32)
    samples.add_argument("--slices-per-volume", type=int, default=8, help="evenly spaced slices kept per volume")
    samples.add_argument("--frames-per-clip", type=int, default=4, help="evenly spaced frames kept per clip")
    samples.add_argument("--strict", action="store_true", help="fail if a modality has no source installed")
    samples.set_defaults(func=_cmd_samples)

    info = sub.add_parser("info", help="read one file and print what meditok-data sees")
    info.add_argument("path", type=Path)
    info.set_defaults(func=_cmd_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args))
    except MedicalImageError as error:
        print(f"meditok-data: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
