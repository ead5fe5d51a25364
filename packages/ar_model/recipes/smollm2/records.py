"""Split the real samples by file into train / held-out, and write the three fine-tuning tasks as records.

    python packages/ar_model/recipes/smollm2/records.py OUT/samples/manifest.jsonl -o OUT/split \
        [--per-task 32] [--modality-questions 96 --captions 32 --generations 16]

Writes ``train.jsonl``, ``heldout.jsonl`` and ``all.jsonl`` (manifests with absolute paths, ``all`` for pretokenize: every slice or frame of a file lands on the same side, so
no held-out image has a sibling slice in training) and ``records.jsonl`` (meditok-ar training records naming train
images by their manifest key): for each modality a set number of records of each task, cycling over its images so that
a modality with one file weighs as much as one with a hundred:

- understanding: "What imaging modality is this, and which body part does it show?" -> "CT of the head."
- caption: "Describe this image in one sentence." -> "An axial CT slice of the head."
- generation: "Generate a CT image." -> the image (condition dropout in the training config makes CFG possible)
"""

from __future__ import annotations

import argparse
import json
import re
from collections import defaultdict
from pathlib import Path

# Held out whole files, chosen so that every modality keeps at least one file on each side (the offline sources have
# two X-rays, two fundus images and three pathology images in all; see shared/data/README.md). Of the CT files, the
# abdominal pancreas slice is held out and the two-frame enhanced CT trains, so that training sees a CT of something
# other than a head (with both held out, every held-out CT was a body region no training CT showed).
HELD_OUT_FILES = {
    "ct_pancreas",
    "mr_colin27",
    "mr_liver",
    "xray_leg",
    "us_echo_cine",
    "us_palette",
    "path_he_tile",
    "fundus_microaneurysms",
}
HELD_OUT_DERMOSCOPY_EVERY = 5  # dermoscopy patches are one file each: every 5th patch is held out

MODALITY_NAMES = {
    "ct": "CT",
    "mri": "MRI",
    "xray": "X-ray",
    "ultrasound": "ultrasound",
    "pathology": "pathology",
    "fundus": "fundus photograph",
    "dermoscopy": "dermoscopy",
}
# Body parts from the files' DICOM tags (BodyPartExamined, StudyDescription) or their sources' documentation;
# None where neither says.
BODY_PARTS = {
    "ct_head_693": "head",
    "ct_cranium": "head",
    "ct_pancreas": "abdomen",
    "mr_shoulder": "shoulder",
    "mr_liver": "abdomen",
    "mr_head_multiframe": "head",
    "mr_mni152_t1": "brain",
    "mr_colin27": "brain",
    "xray_chest_pa": "chest",
    "xray_leg": "lower leg",
    "us_echo_cine": "heart",
    "path_ihc": "colon",
    "fundus_retina": "retina",
    "fundus_microaneurysms": "retina",
}
CAPTIONS = {
    "ct": "An axial CT slice{of}.",
    "mri": "An MRI slice{of}.",
    "xray": "A radiograph{of}.",
    "ultrasound": "An ultrasound image{of}.",
    "pathology": "A microscope image of a stained tissue section{of}.",
    "fundus": "A colour fundus photograph of the retina.",
    "dermoscopy": "A dermoscopy close-up of a skin lesion.",
}
MODALITY_QUESTION = "What imaging modality is this, and which body part does it show?"
CAPTION_QUESTION = "Describe this image in one sentence."
# The first of these found in an answer names its modality (order of appearance, so "CT of the head" is CT).
MODALITY_PATTERNS = {
    "ct": r"\bCT\b|computed tomograph",
    "mri": r"\bMRI?\b|magnetic resonance",
    "xray": r"x-ray|radiograph",
    "ultrasound": r"ultrasound|sonograph",
    "pathology": r"patholog|histolog|tissue section",
    "fundus": r"fundus|retina",
    "dermoscopy": r"dermoscop",
}


def dataset_of(row: dict) -> str:
    return row.get("dataset_name") or Path(row["path"]).stem


def is_held_out(row: dict, position_in_modality: int) -> bool:
    if row["modality"] == "dermoscopy":
        return position_in_modality % HELD_OUT_DERMOSCOPY_EVERY == HELD_OUT_DERMOSCOPY_EVERY - 1
    return dataset_of(row) in HELD_OUT_FILES


def modality_answer(row: dict) -> str:
    part = BODY_PARTS.get(dataset_of(row))
    name = MODALITY_NAMES[row["modality"]]
    return f"{name} of the {part}." if part else f"{name[0].upper()}{name[1:]} image."


def caption(row: dict) -> str:
    part = BODY_PARTS.get(dataset_of(row))
    return CAPTIONS[row["modality"]].format(of=f" of the {part}" if part else "")


def generation_prompt(modality: str) -> str:
    return f"Generate a {MODALITY_NAMES[modality]} image."


def answer_modality(answer: str) -> str | None:
    """The modality an answer names first (None if it names none)."""
    found = [(m.start(), name) for name, p in MODALITY_PATTERNS.items() if (m := re.search(p, answer, re.IGNORECASE))]
    return min(found)[1] if found else None


def row_key(row: dict) -> str:
    """The manifest key (``meditok.data.ManifestRow.key``): what pretokenize records as an entry's source."""
    from meditok.data.manifest import ManifestRow

    return ManifestRow.from_dict(row).key


def split(rows: list[dict]) -> tuple[list[dict], list[dict]]:
    train, held_out, seen = [], [], defaultdict(int)
    for row in rows:
        position = seen[row["modality"]]
        seen[row["modality"]] += 1
        (held_out if is_held_out(row, position) else train).append(row)
    return train, held_out


def spread(rows: list[dict], count: int) -> list[dict]:
    """``count`` rows evenly spread over ``rows`` (cycling when there are fewer rows than ``count``)."""
    return [rows[(i * len(rows)) // count if len(rows) >= count else i % len(rows)] for i in range(count)]


def make_records(train: list[dict], modality_questions: int, captions: int, generations: int,
                 views: int = 1) -> list[dict]:  # fmt: skip
    """Per modality: modality questions, captions and generation samples, each spread over the modality's images; the
    questions and captions also over their ``views`` (the image and its augmented views from ``meditok-ar pretokenize
    --augment views-1``)."""
    from meditok.ar.pretokenize import augmented_key

    by_modality: dict[str, list[tuple[dict, str]]] = defaultdict(list)
    for view in range(views):  # view-major, so that a modality's records reach every image before repeating one
        for row in train:
            by_modality[row["modality"]].append((row, augmented_key(row_key(row), view)))
    records = []
    for modality, items in sorted(by_modality.items()):
        for row, key in spread(items, modality_questions):
            records.append({"image": key, "conversations": [
                {"from": "human", "value": f"<image>\n{MODALITY_QUESTION}"},
                {"from": "gpt", "value": modality_answer(row)}]})  # fmt: skip
        for row, key in spread(items, captions):
            records.append({"image": key, "conversations": [
                {"from": "human", "value": f"<image>\n{CAPTION_QUESTION}"},
                {"from": "gpt", "value": caption(row)}]})  # fmt: skip
        originals = items[: len(items) // views]  # generation learns images as they are, not rotated or flipped
        for _, key in spread(originals, generations):
            records.append({"type": "generation", "prompt": generation_prompt(modality), "image": key})
    return records


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("manifest", type=Path)
    parser.add_argument("-o", "--out", type=Path, required=True)
    parser.add_argument("--per-task", type=int, default=32, help="records per modality and task")
    # The mean loss over a batch's label tokens weighs a generation record (its 8*h*w + 1 code tokens) far above a
    # short answer: at 32 of each, the answers get about a tenth of the gradient. These shift the mix per task.
    parser.add_argument("--modality-questions", type=int, help="modality questions per modality (default --per-task)")
    parser.add_argument("--captions", type=int, help="caption records per modality (default --per-task)")
    parser.add_argument("--generations", type=int, help="generation records per modality (default --per-task)")
    parser.add_argument("--views", type=int, default=1, help="views per image in the codes (pretokenize --augment "
                        "views-1): records cycle over them")  # fmt: skip
    args = parser.parse_args(argv)
    rows = [json.loads(line) for line in args.manifest.read_text().splitlines() if line.strip()]
    base = args.manifest.parent
    for row in rows:  # absolute paths: the split manifests live in another folder than the images
        row["path"] = str((base / row["path"]).resolve())
    train, held_out = split(rows)
    pick = [args.per_task if n is None else n for n in (args.modality_questions, args.captions, args.generations)]
    records = make_records(train, *pick, views=args.views)
    args.out.mkdir(parents=True, exist_ok=True)
    named = (("train.jsonl", train), ("heldout.jsonl", held_out), ("all.jsonl", rows), ("records.jsonl", records))
    for name, items in named:
        (args.out / name).write_text("".join(json.dumps(item) + "\n" for item in items))
    counts = defaultdict(lambda: [0, 0])
    for side, items in enumerate((train, held_out)):
        for row in items:
            counts[row["modality"]][side] += 1
    print(f"{len(train)} train / {len(held_out)} held-out images, {len(records)} records → {args.out}: "
          + ", ".join(f"{m} {a}/{b}" for m, (a, b) in sorted(counts.items())))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
