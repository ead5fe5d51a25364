"""Images/s for read + preprocess of real DICOMs (meditok-data), single process and through a DataLoader.

    python benchmarks/data_throughput.py --workers 2 --seconds 20

Uses the real CT/MR/X-ray/US DICOMs of pydicom-data (`pip install 'meditok-data[samples]'`). Each image is read from
disk, converted to physical units (HU, inverted MONOCHROME1, palette → RGB), normalised and resized to 256², in
training mode (random CT window + the reference's augmentations). Prints one JSON line per configuration.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import time

import torch
from torch.utils.data import DataLoader

from meditok.data import ImageDataset, ManifestRow, Preprocess
from meditok.data.samples import find_samples


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


def measure(rows: list[ManifestRow], workers: int, seconds: float, train: bool) -> dict[str, object]:
    # A long epoch (the rows repeated) so that worker start-up is paid once, as in training.
    dataset = ImageDataset(rows * 200, Preprocess(size=256, train=train), seed=0)
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
    }
    print(json.dumps(header))
    for workers in args.workers:
        for train in (False, True):
            print(json.dumps(measure(rows, workers, args.seconds, train)), flush=True)


if __name__ == "__main__":
    main()
