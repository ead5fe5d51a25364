"""PEFT LoRA fine-tuning of MedITokAR, in one process or under DeepSpeed ZeRO-2 (the ``deepspeed`` launcher).

Config (YAML or dict)::

    model: {base: LLM_OR_MEDITOKAR_DIR, image_tokenizer: MEDITOK_DIR, out: OUT_DIR, layout: null}  # flat | compact
    compact: {input_adapter: sum, head_layers: 1, head_heads: null}   # compact layout only, when extending a plain LLM
    lora: {r: 8, alpha: 16, dropout: 0.0, target_modules: all-linear, token_training: trainable_tokens}
    data: {codes: CODES_DIR, records: RECORDS.jsonl, cond_dropout: 0.1, max_length: 4096}
    train: {steps: 100, lr: 1.0e-3, batch_size: 2, seed: 0, log_every: 10, deepspeed: false, zero_stage: 2,
            token_lr: null, warmup: 0.0, lr_end_ratio: 1.0,   # token_lr: the new rows' rate; warmup share; cosine end
            loss_average: token}                             # token | sequence (each record weighs the same)

Loaded as typed dataclasses (`ARTrainConfig`) by the tokenizer trainer's mechanism (`meditok.tokenizer.typed_config`):
unknown keys and wrong types are errors naming the key; ``section.key=value`` overrides (``meditok-ar train --config
train.yaml train.steps=20``) are read as YAML.

``data.codes`` (a CodesDataset folder, e.g. from ``meditok-ar pretokenize``) gives generation records (caption ->
image); ``data.records`` (JSONL) adds understanding / generation / interleaved records whose images name a code
entry by its ``source`` (the manifest key) — see README. Output: ``OUT/base`` (the extended base, when ``base`` was a
plain LLM), ``OUT/adapter`` (PEFT adapter; ``MedITokAR.from_pretrained(OUT/adapter)`` loads base + adapter) and
``OUT/train_log.json``.

``model.layout``: the token layout when ``base`` is a plain LLM (default flat); for an extended base it must match
the base's (a LayoutError otherwise). A compact model trains LoRA on the backbone and its input adapter and depth head
in full (saved with the adapter, ``OUT/adapter/compact_image.safetensors``).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from meditok.ar.codes import load_code_table
from meditok.ar.compact import CompactConfig
from meditok.ar.layout import CONFIG_KEY
from meditok.ar.sequences import RecordSampler, collate
from meditok.data.distributed import launched, rank_and_world_size, start_deepspeed
from meditok.tokenizer.typed_config import load_typed_config


@dataclass
class ModelSection:
    base: str | None = None  # a plain LLM folder or a MedITokAR (extended) folder
    image_tokenizer: str | None = None  # a MedITok folder; needed when base is a plain LLM
    out: str | None = None
    layout: str | None = None  # flat | compact; None: the base's (flat when extending a plain LLM)


@dataclass
class LoraSection:
    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: list[str] | str = "all-linear"
    token_training: str = "trainable_tokens"


@dataclass
class DataSection:
    codes: str | None = None  # a CodesDataset folder
    records: str | None = None  # JSONL records naming code entries by source
    cond_dropout: float = 0.1
    max_length: int = 4096


@dataclass
class TrainSection:
    steps: int = 100
    lr: float = 1e-3
    batch_size: int = 2
    seed: int = 0
    log_every: int = 10
    deepspeed: bool = False
    zero_stage: int = 2
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    # The new image-token rows start far from anything the base predicts (a first code loss of ~20 nats), so their
    # gradients are large; a lower LoRA rate with its own token rate, a warmup and a decay keep the backbone's language
    # (measured on SmolLM2: BENCHMARKS.md, "SmolLM2 recipe").
    token_lr: float | None = None  # rate of the new token rows (trainable tokens / modules_to_save); None = lr
    warmup: float = 0.0  # share of the steps with a linear warmup from 0
    lr_end_ratio: float = 1.0  # cosine decay to lr * lr_end_ratio over the steps after warmup; 1.0 = constant
    # token: the batch loss is the mean over all label tokens (Hugging Face's), so a generation record's 129+ code
    # tokens outweigh a six-token answer ~20:1; sequence: each sequence's mean, averaged over the batch, so every
    # record weighs the same (flat layout only).
    loss_average: str = "token"


# Checked twice: from the config before anything loads (model.layout), and once the base is loaded (a compact base
# folder given without model.layout).
SEQUENCE_AVERAGE_FLAT_ONLY = "train.loss_average=sequence is implemented for the flat layout only"


def lr_factor(step: int, steps: int, warmup: float, end_ratio: float) -> float:
    """Multiplier of the base rates at ``step`` (0-based): linear warmup, then cosine to ``end_ratio``."""
    warm = int(round(warmup * steps))
    if step < warm:
        return (step + 1) / warm
    if end_ratio == 1.0:
        return 1.0
    progress = (step - warm) / max(1, steps - warm - 1)
    return end_ratio + (1 - end_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


@dataclass
class ARTrainConfig:
    model: ModelSection = field(default_factory=ModelSection)
    lora: LoraSection = field(default_factory=LoraSection)
    compact: CompactConfig = field(default_factory=CompactConfig)
    data: DataSection = field(default_factory=DataSection)
    train: TrainSection = field(default_factory=TrainSection)

    def validate(self) -> ARTrainConfig:
        for key in ("base", "out"):
            if not getattr(self.model, key):
                raise ValueError(f"model.{key} is required")
        if not self.data.codes and not self.data.records:
            raise ValueError("data.codes or data.records is required")
        if self.model.layout not in (None, "flat", "compact"):
            raise ValueError(f"model.layout must be flat or compact, got {self.model.layout!r}")
        self.compact.validate()
        tr = self.train
        if not 0 <= tr.warmup < 1:
            raise ValueError(f"train.warmup must be a share of the steps in [0, 1), got {tr.warmup}")
        if not 0 <= tr.lr_end_ratio <= 1:
            raise ValueError(f"train.lr_end_ratio must be in [0, 1], got {tr.lr_end_ratio}")
        if tr.loss_average not in ("token", "sequence"):
            raise ValueError(f"train.loss_average must be token or sequence, got {tr.loss_average!r}")
        if tr.loss_average == "sequence" and self.model.layout == "compact":
            raise ValueError(SEQUENCE_AVERAGE_FLAT_ONLY)
        for key in ("lr", "token_lr"):
            value = getattr(tr, key)
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise ValueError(f"train.{key} must be a finite rate >= 0, got {value}")
        return self


def sequence_averaged_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy averaged within each sequence over its label tokens, then over the sequences that
    have any (labels -100 are ignored, as in Hugging Face's causal-LM loss)."""
    targets = labels[:, 1:]
    per_token = torch.nn.functional.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(), targets.flatten(), ignore_index=-100, reduction="none"
    ).view(targets.shape)
    counted = (targets != -100).sum(dim=1)
    has_labels = counted > 0
    return (per_token.sum(dim=1)[has_labels] / counted[has_labels]).mean()


def batch_loss(module: Any, batch: dict[str, torch.Tensor], average: str) -> torch.Tensor:
    if average == "token":
        return module(**batch).loss
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    return sequence_averaged_loss(module(**inputs).logits, batch["labels"])


def load_config(
    config: str | os.PathLike | dict[str, Any] | ARTrainConfig, overrides: Sequence[str] = ()
) -> ARTrainConfig:
    """A YAML file or dict (sections as in the module docstring) plus ``section.key=value`` overrides, typed and
    checked (the tokenizer trainer's mechanism: `meditok.tokenizer.typed_config`)."""
    if isinstance(config, ARTrainConfig):
        return config.validate()
    return load_typed_config(ARTrainConfig, config, overrides).validate()


def build_records(data: DataSection) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    table = load_code_table(data.codes) if data.codes else {}
    if data.codes and not data.records:  # caption -> image from every code entry
        for entry in table.values():
            codes, grid = entry["codes"], entry["grid"] or None
            records.append({"type": "generation", "prompt": entry["caption"], "codes": codes, "grid": grid})
        return records

    def lookup(key: str) -> tuple[torch.Tensor, tuple[int, int] | None]:
        if key not in table:
            raise KeyError(f"image {key!r} is not in the codes folder {data.codes} ({len(table)} entries)")
        return table[key]["codes"], table[key]["grid"] or None

    for n, line in enumerate(Path(data.records).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        r = json.loads(line)
        kind = r.get("type") or (
            "understanding" if "conversations" in r else "interleaved" if "segments" in r else "generation"
        )
        if kind == "understanding":
            keys = r.get("image") or r.get("images") or []
            keys = [keys] if isinstance(keys, str) else keys
            records.append({"type": kind, "conversations": r["conversations"], "images": [lookup(k) for k in keys]})
        elif kind == "generation":
            codes, grid = lookup(r["image"])
            records.append({"type": kind, "prompt": r["prompt"], "codes": codes, "grid": grid})
        elif kind == "interleaved":
            segs = [s if isinstance(s, str) else lookup(s["image"]) for s in r["segments"]]
            records.append({"type": kind, "segments": segs})
        else:
            raise ValueError(f"{data.records}:{n}: unknown record type {kind!r}")
    return records


def prepare_model(cfg: ARTrainConfig, rank: int = 0) -> Any:
    """Load / extend the base, save the extended base once (rank 0), add LoRA."""
    from meditok.ar.model import MedITokAR

    m, out = cfg.model, Path(cfg.model.out)
    base_dir = Path(m.base)
    is_extended = (
        CONFIG_KEY in json.loads((base_dir / "config.json").read_text())
        if (base_dir / "config.json").exists()
        else False
    )
    if not is_extended:
        extended = out / "base"
        if rank == 0 and not (extended / "config.json").exists():
            compact = cfg.compact if m.layout == "compact" else None
            MedITokAR.from_pretrained(base_dir, tokenizer=m.image_tokenizer, layout=m.layout,
                                      compact=compact).save_pretrained(extended)  # fmt: skip
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.barrier()
        base_dir = extended
    model = MedITokAR.from_pretrained(base_dir, tokenizer=m.image_tokenizer, layout=m.layout)
    lora = cfg.lora
    model.add_lora(lora.r, lora.alpha, lora.dropout, lora.target_modules, lora.token_training)
    return model


def train(config: str | os.PathLike | dict[str, Any] | ARTrainConfig, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Run a fine-tuning job; returns {"losses", "adapter", "seconds", "tokens"}."""
    cfg = load_config(config, overrides)
    tr, data = cfg.train, cfg.data
    rank, world = rank_and_world_size()
    use_ds = tr.deepspeed or launched()
    engine = None
    if use_ds:
        import deepspeed

        rank, world, _ = start_deepspeed()
    torch.manual_seed(tr.seed)
    model = prepare_model(cfg, rank)
    if tr.loss_average == "sequence" and model.layout.compact:  # a compact base named by its folder, not model.layout
        raise ValueError(SEQUENCE_AVERAGE_FLAT_ONLY)
    llm = model.training_module()  # the LLM, or (compact layout) the LLM with its input adapter and depth head
    llm.train()
    sampler = RecordSampler(model.builder, build_records(data), data.cond_dropout, tr.seed, rank, world)
    trainable = [(n, p) for n, p in llm.named_parameters() if p.requires_grad]
    params = [p for _, p in trainable]
    # PEFT names the new rows' parameters trainable_tokens_delta (trainable tokens) or modules_to_save (full copies).
    token_row = [("trainable_tokens" in n or "modules_to_save" in n) for n, _ in trainable]
    groups = [
        {"params": [p for (_, p), t in zip(trainable, token_row) if not t], "lr": tr.lr},
        {
            "params": [p for (_, p), t in zip(trainable, token_row) if t],
            "lr": tr.lr if tr.token_lr is None else tr.token_lr,
        },
    ]
    groups = [g for g in groups if g["params"]]

    def schedule(optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: lr_factor(step, tr.steps, tr.warmup, tr.lr_end_ratio)
        )

    if use_ds:
        ds_config = {
            "train_micro_batch_size_per_gpu": tr.batch_size,
            "gradient_accumulation_steps": 1,
            "gradient_clipping": tr.grad_clip,
            "zero_optimization": {"stage": tr.zero_stage},
            # torch_adam: no 140 s fused_adam JIT on the CPU
            "optimizer": {
                "type": "AdamW",
                "params": {"lr": tr.lr, "weight_decay": tr.weight_decay, "torch_adam": True},
            },
        }
        engine, _, _, scheduler = deepspeed.initialize(
            model=llm, model_parameters=groups, config=ds_config, lr_scheduler=schedule
        )
    else:
        optimizer = torch.optim.AdamW(groups, lr=tr.lr, weight_decay=tr.weight_decay)
        scheduler = schedule(optimizer)
    from tqdm.auto import tqdm

    losses, tokens, start = [], 0, time.perf_counter()
    progress = tqdm(total=tr.steps, desc="fine-tune", unit="step", disable=rank != 0)  # rate and ETA
    for step in range(tr.steps):
        batch = collate(sampler.next_batch(tr.batch_size), model.builder.pad, data.max_length)
        tokens += int(batch["attention_mask"].sum())
        if engine is not None:
            loss = batch_loss(engine, batch, tr.loss_average)
            engine.backward(loss)
            engine.step()
        else:
            loss = batch_loss(llm, batch, tr.loss_average)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if tr.grad_clip:
                torch.nn.utils.clip_grad_norm_(params, tr.grad_clip)
            optimizer.step()
            scheduler.step()
        losses.append(float(loss.detach()))
        progress.update(1)
        progress.set_postfix(loss=f"{losses[-1]:.4f}", refresh=False)
        if rank == 0 and tr.log_every and (step % tr.log_every == 0 or step == tr.steps - 1):
            progress.write(f"step {step} loss {losses[-1]:.4f}")
    progress.close()
    seconds = time.perf_counter() - start
    out = Path(cfg.model.out)
    adapter = out / "adapter"
    llm.eval()
    if rank == 0:
        if model.layout.compact:
            model.save_pretrained(adapter)  # the LoRA adapter and the adapter / head weights beside it
        else:
            (engine.module if engine is not None else llm).save_pretrained(str(adapter))
        log = {"losses": losses, "seconds": seconds, "tokens": tokens, "world_size": world, "deepspeed": use_ds,
               "trainable_parameters": sum(p.numel() for p in params)}  # fmt: skip
        (out / "train_log.json").write_text(json.dumps(log))
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return {"losses": losses, "adapter": adapter, "seconds": seconds, "tokens": tokens, "model": model}
