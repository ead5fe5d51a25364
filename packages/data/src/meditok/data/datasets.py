"""Streaming datasets for the tokenizer (stage 1: images; stage 2: image–text pairs), on a base other formats reuse.

Every dataset is a torch `IterableDataset` over *units* (manifest rows, or shards of a shard directory). Per epoch
the units are permuted with ``seed + epoch`` (identical on every rank) and dealt round-robin to the
``world_size × num_workers`` streams, so each sample is seen exactly once per epoch across all processes.

Samples carry ``_stream`` (global worker id) and ``_position`` (index in that stream); `ResumableLoader` records
them from the batches the training loop has actually received, and `load_state_dict` makes each stream skip what
was consumed. Resuming needs the same seed, epoch, world size and number of workers. `StreamDataset` is that
machinery for any sample format (meditok-ar's ``CodesDataset`` is one): a subclass yields ``(position, sample)``
from `StreamDataset.samples`, usually through `StreamDataset.shard_samples`.
"""

from __future__ import annotations

import logging
import multiprocessing
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from meditok.data.distributed import rank_and_world_size
from meditok.data.errors import MedicalImageError
from meditok.data.image import MedicalImage
from meditok.data.manifest import ManifestRow, load_row, read_manifest
from meditok.data.modality import template_caption
from meditok.data.shards import ShardIndex, decode_image_sample, iter_shard
from meditok.data.transforms import Preprocess

log = logging.getLogger("meditok.data")


class _SkipCounter:
    """Counters shared by the DataLoader workers (plain ints cannot be: each worker holds a copy of the dataset)."""

    def __init__(self) -> None:
        context = multiprocessing.get_context()
        self._attempted = context.Value("q", 0)
        self._skipped = context.Value("q", 0)
        self._logged: set[str] = set()

    def attempt(self) -> None:
        with self._attempted.get_lock():
            self._attempted.value += 1

    def skip(self, error: MedicalImageError, skip_log: Path | None) -> None:
        with self._skipped.get_lock():
            self._skipped.value += 1
        where = str(error.path)
        if where not in self._logged:  # once per file per process, however many epochs
            self._logged.add(where)
            log.warning("skipped %s", error)
            if skip_log is not None:
                with open(skip_log, "a", encoding="utf-8") as handle:
                    handle.write(f"{error}\n")

    @property
    def attempted(self) -> int:
        return int(self._attempted.value)

    @property
    def skipped(self) -> int:
        return int(self._skipped.value)

    def reset(self) -> None:
        self._attempted.value = 0
        self._skipped.value = 0


class StreamDataset(IterableDataset):
    """Shared partitioning, shuffling, skip accounting and resume logic; subclasses implement `samples`."""

    def __init__(
        self,
        *,
        seed: int = 0,
        shuffle: bool = True,
        strict: bool = False,
        rank: int | None = None,
        world_size: int | None = None,
        skip_log: str | Path | None = None,
    ) -> None:
        super().__init__()
        self.seed = seed
        self.shuffle = shuffle
        self.strict = strict
        self.rank = rank
        self.world_size = world_size
        self.skip_log = Path(skip_log) if skip_log else None
        self.epoch = 0
        self._consumed: dict[int, int] = {}
        self._counter = _SkipCounter()

    # -- accounting -------------------------------------------------------------------------------------------
    @property
    def attempted(self) -> int:
        return self._counter.attempted

    @property
    def skipped(self) -> int:
        return self._counter.skipped

    def summary(self) -> str:
        return f"{self.skipped} skipped of {self.attempted}"

    # -- epochs and resume --------------------------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self._consumed = {}
        self.epoch = epoch

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch = int(state["epoch"])
        self._consumed = {int(k): int(v) for k, v in state["consumed"].items()}

    # -- partitioning -------------------------------------------------------------------------------------------
    def _stream_id(self) -> tuple[int, int]:
        rank, world = rank_and_world_size(self.rank, self.world_size)
        worker = get_worker_info()
        workers, worker_id = (worker.num_workers, worker.id) if worker is not None else (1, 0)
        return rank * workers + worker_id, world * workers

    def _unit_order(self, count: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(count)
        return np.random.default_rng([self.seed, self.epoch]).permutation(count)

    def _generator(self, stream: int, position: int) -> torch.Generator:
        # Augmentation randomness depends only on (seed, epoch, stream, position), so a resumed run reproduces it.
        return torch.Generator().manual_seed(hash((self.seed, self.epoch, stream, position)) & 0x7FFF_FFFF_FFFF)

    def _handle_error(self, error: Exception, where: str) -> None:
        if not isinstance(error, MedicalImageError):
            error = MedicalImageError(where, f"unexpected {type(error).__name__}: {error}")
        if self.strict:
            raise error
        self._counter.skip(error, self.skip_log)

    def samples(self, stream: int, streams: int, skip: int) -> Iterator[tuple[int, dict[str, Any]]]:
        """(position, sample) of stream ``stream`` of ``streams``, leaving out the first ``skip`` (already consumed)."""
        raise NotImplementedError

    def shard_samples(
        self,
        index: ShardIndex,
        stream: int,
        streams: int,
        skip: int,
        decode: Callable[[dict[str, Any], str, int], dict[str, Any]],
        shuffle_within: bool = False,
    ) -> Iterator[tuple[int, dict[str, Any]]]:
        """`samples` of a shard directory: this stream's shards (permuted per epoch), ``decode(raw, where,
        position)`` per raw sample; unreadable shards and samples are counted and skipped (raised when strict)."""
        shard_order = self._unit_order(len(index.shards))[stream::streams]
        position = 0
        for shard_index in shard_order:
            shard = index.shards[int(shard_index)]
            count = int(shard["count"])
            if position + count <= skip:  # whole shard already consumed: do not even open it
                position += count
                continue
            path = index.directory / shard["name"]
            try:
                raw = list(iter_shard(path))
            except MedicalImageError as error:
                self._counter.attempt()
                self._handle_error(error, str(path))
                position += count
                continue
            if shuffle_within and self.shuffle:
                permutation = np.random.default_rng([self.seed, self.epoch, int(shard_index)]).permutation(len(raw))
                raw = [raw[i] for i in permutation]
            for sample_raw in raw:
                current = position
                position += 1
                if current < skip:
                    continue
                self._counter.attempt()
                where = f"{path}:{sample_raw.get('__key__')}"
                try:
                    sample = decode(sample_raw, where, current)
                except Exception as error:  # noqa: BLE001 - lenient mode must survive any single bad sample
                    self._handle_error(error, where)
                    continue
                yield current, sample

    def __iter__(self) -> Iterator[dict[str, Any]]:
        stream, streams = self._stream_id()
        skip = self._consumed.get(stream, 0)
        for position, sample in self.samples(stream, streams, skip):
            sample["_stream"] = stream
            sample["_position"] = position
            yield sample


class _ImageStream(StreamDataset):
    """Images from a manifest (rows) or a shard directory, preprocessed to [3, H, W] in [-1, 1]."""

    with_caption = False

    def __init__(
        self,
        source: str | Path | Sequence[ManifestRow],
        preprocess: Preprocess | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.preprocess = preprocess or Preprocess()
        self.rows: list[ManifestRow] | None = None
        self.shards: ShardIndex | None = None
        if isinstance(source, str | Path) and Path(source).is_dir():
            self.shards = ShardIndex.load(source)
        elif isinstance(source, str | Path):
            self.rows = read_manifest(source)
        else:
            self.rows = list(source)

    def __len__(self) -> int:
        return self.shards.total if self.shards is not None else len(self.rows or [])

    def _make_sample(
        self, image: MedicalImage, key: str, caption: str | None, stream: int, position: int
    ) -> dict[str, Any]:
        sample: dict[str, Any] = {
            "image": self.preprocess(image, self._generator(stream, position)),
            "modality": image.modality,
            "key": key,
        }
        if self.with_caption:
            sample["caption"] = caption or template_caption(image.modality)
        return sample

    def samples(self, stream: int, streams: int, skip: int) -> Iterator[tuple[int, dict[str, Any]]]:
        if self.rows is not None:
            order = self._unit_order(len(self.rows))[stream::streams]
            for position, row_index in enumerate(order):
                if position < skip:
                    continue
                row = self.rows[int(row_index)]
                self._counter.attempt()
                try:
                    sample = self._make_sample(load_row(row), row.key, row.caption, stream, position)
                except Exception as error:  # noqa: BLE001 - lenient mode must survive any single bad file
                    self._handle_error(error, row.key)
                    continue
                yield position, sample
            return
        assert self.shards is not None

        def decode(raw: dict[str, Any], where: str, position: int) -> dict[str, Any]:
            image, meta = decode_image_sample(raw)
            return self._make_sample(image, meta["source"], meta.get("caption"), stream, position)

        yield from self.shard_samples(self.shards, stream, streams, skip, decode, shuffle_within=True)


class ImageDataset(_ImageStream):
    """Stage 1: unpaired images → {"image": [3, H, W] float in [-1, 1], "modality", "key"}.

    ``source``: a manifest (.jsonl or the reference's .csv), a list of `ManifestRow`, or a shard directory.
    """


class ImageTextDataset(_ImageStream):
    """Stage 2: image–text pairs → also "caption" (the row's, else "A {modality} image" like the reference)."""

    with_caption = True


class ResumableLoader:
    """A DataLoader that remembers, from the batches it has handed out, where every stream stands.

    >>> loader = ResumableLoader(dataset, batch_size=32, num_workers=4)
    >>> for batch in loader: ...; checkpoint["data"] = loader.state_dict()
    >>> loader.load_state_dict(checkpoint["data"])   # after a restart: continues mid-epoch
    """

    def __init__(self, dataset: StreamDataset, **loader_kwargs: Any) -> None:
        self.dataset = dataset
        self.loader_kwargs = loader_kwargs
        self._consumed: dict[int, int] = {}

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.dataset.epoch:
            self._consumed = {}
        self.dataset.set_epoch(epoch)

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.dataset.epoch, "consumed": dict(self._consumed)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.dataset.load_state_dict(state)
        self._consumed = {int(k): int(v) for k, v in state["consumed"].items()}

    def __iter__(self) -> Iterator[Any]:
        self.dataset.load_state_dict(self.state_dict())
        for batch in DataLoader(self.dataset, **self.loader_kwargs):
            streams = batch["_stream"]
            positions = batch["_position"]
            if isinstance(streams, torch.Tensor):
                pairs = zip(streams.tolist(), positions.tolist())
            elif isinstance(streams, list):
                pairs = zip(streams, positions)
            else:
                pairs = [(int(streams), int(positions))]
            for stream, position in pairs:
                self._consumed[int(stream)] = max(self._consumed.get(int(stream), 0), int(position) + 1)
            yield batch
        # A completed pass starts the next one from the beginning even if set_epoch is not called.
        self._consumed = {}
        self.dataset.load_state_dict(self.state_dict())
