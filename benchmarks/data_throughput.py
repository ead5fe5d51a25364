"""Images/s for read + preprocess of real DICOMs (meditok-data), single process and through a DataLoader.

    python benchmarks/data_throughput.py --workers 2 --seconds 20
    python benchmarks/data_throughput.py --source shards --max-side 160 --sizes 64 128 --workers 0   # what training reads

Uses the real CT/MR/X-ray/US DICOMs of pydicom-data (`pip install 'meditok-data[samples]'`). Each image is read from
disk, converted to physical units (HU, inverted MONOCHROME1, palette → RGB), normalised and resized to 256², in
training mode (random CT window + the reference's augmentations). Prints one JSON line per configuration.
`--source shards` first packs the same rows into WebDataset shards (`write_shards`, `--max-side` as
`meditok-data shards --max-side`), then reads those: the path tokenizer training takes.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import tempfile
import time

import torch
from torch.utils.data import DataLoader

from meditok.data import ImageDataset, ManifestRow, Preprocess
from meditok.data.samples import find_samples
from meditok.data.shards import write_shards


def dicom_rows() -> list[ManifestRow]:
    rows = []
    for sample in find_samples():
        if sample.path.suffix != ".dcm":
            continue
        if sample.kind == "clip":  # a few frames of each clip, like a manifest indexed per frame
            rows += [ManifestRow(str(sample.path), sample.modality, "frame", index=i) for i in range(2)]
        else:
            rows.append(ManifestRow(str(sample.path), sample.modality))
    if not rows:
        raise SystemExit("no DICOM samples: pip install 'meditok-data[samples]'")
    return rows


def measure(source, workers: int, seconds: float, train: bool, size: int = 256) -> dict[str, object]:
    # A long epoch (the rows repeated) so that worker start-up is paid once, as in training.
    source = source * 200 if isinstance(source, list) else source
    dataset = ImageDataset(source, Preprocess(size=size, train=train), seed=0)
    count, start, epoch = 0, None, 0
    while True:
        dataset.set_epoch(epoch)
        for batch in DataLoader(dataset, batch_size=8, num_workers=workers):
            if start is None:  # the first batch pays worker start-up; leave it out
                start = time.perf_counter()
                continue
            count += batch["image"].shape[0]
            if time.perf_counter() - start >= seconds:
                elapsed = time.perf_counter() - start
                return {
                    "size": size,
                    "workers": workers,
                    "train_augment": train,
                    "images": count,
                    "seconds": round(elapsed, 2),
                    "images_per_s": round(count / elapsed, 1),
                    "skipped": dataset.summary(),
                }
        epoch += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--source", choices=["dicom", "shards"], default="dicom")
    parser.add_argument("--max-side", type=int, help="shards: longest side stored (as meditok-data shards --max-side)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[256], help="preprocessed image size(s)")
    args = parser.parse_args()
    torch.set_num_threads(1)  # one thread per process: workers provide the parallelism
    rows = dicom_rows()
    header = {
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs, {platform.processor() or platform.platform()}",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "date": datetime.date.today().isoformat(),
        "dicom_rows": len(rows),
        "modalities": sorted({r.modality for r in rows}),
        "source": args.source,
        "max_side": args.max_side,
    }
    print(json.dumps(header))
    with tempfile.TemporaryDirectory() as tmp:
        source = rows
        if args.source == "shards":
            # the rows repeated so that an epoch spans several shards, as a real dataset does
            write_shards(rows * 20, tmp, shard_size=100, max_side=args.max_side, progress=False)
            source = tmp
        for size in args.sizes:
            for workers in args.workers:
                for train in (False, True):
                    print(json.dumps(measure(source, workers, args.seconds, train, size)), flush=True)


if __name__ == "__main__":
    main()
