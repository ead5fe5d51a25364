"""The two-stage MedITok training loop on DeepSpeed (CPU/gloo or GPU/nccl; same code).

Design: two DeepSpeed engines, one for the generator side (the MedITok core + the trainable teacher adapters) and
one for the discriminator heads. Each has its own torch AdamW (passed as a client optimizer, so no fused_adam JIT)
and its own LambdaLR (linear warm-up, cosine to `lr_end_ratio`), stepped by `engine.step()`. The frozen teacher,
LPIPS net and discriminator backbone live outside both engines (in plain attributes / lists), so they are neither
optimised, all-reduced nor checkpointed.

Per step: G forward -> losses (rec, LPIPS, VQ, CLIP, adaptive-weighted GAN) -> G backward/step (D heads frozen)
-> logit_scale clamp -> D step on detached reconstructions (hinge + consistency regularisation).
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..api import MedITok
from ..auxiliary import AuxModelError, load_lpips, load_text_tower, load_vision_teacher
from ..config import get_config
from .checkpointing import barrier, load_checkpoint, save_checkpoint
from .config import TrainConfig, steps_from_fraction
from .discriminator import DinoDiscriminator, load_disc_backbone
from .export import STATE_FILE, checkpoint_model_config, export_checkpoint, read_core_state
from .losses import (
    DiffAug,
    adaptive_weight_from_output,
    clip_loss,
    disc_schedules,
    generator_loss,
    hinge_d_loss,
    reconstruction_loss,
)
from .runlog import LOG_NAME, DiskError, append_record, check_writable, free_space, read_records
from .safe_load import UnsafeCheckpointError

NO_DECAY_KEYS = ("norm_scale", "bn", "ln", "bias", "logit_scale", "norm")


class NonFiniteError(RuntimeError):
    """Non-finite training: `run.max_nonfinite_steps` steps in a row, or non-finite weights at a save / export."""


def all_ranks_true(flag: bool, device: torch.device) -> bool:
    """True on every rank iff ``flag`` is true on every rank (one all-reduce; the ranks must skip together)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return flag
    t = torch.tensor([0 if flag else 1], dtype=torch.int32, device=device)
    torch.distributed.all_reduce(t)
    return int(t.item()) == 0


def first_nonfinite(named: Any) -> str | None:
    """The name of the first tensor in ``named`` ((name, tensor) pairs) holding NaN or inf, else None."""
    for name, t in named:
        if t is not None and t.is_floating_point() and not bool(torch.isfinite(t).all()):
            return name
    return None


# --------------------------------------------------------------------------------------------- pure helpers


def param_groups(module: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay everywhere except params with ndim < 2 and names containing norm/bn/ln/bias/logit_scale."""
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        leaf = name.lower()
        if p.ndim < 2 or any(k in leaf for k in NO_DECAY_KEYS):
            no_decay.append(p)
        else:
            decay.append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def lr_factor(step: int, warmup: int, total: int, end_ratio: float = 0.1) -> float:
    """Linear warm-up from 0 over `warmup` steps, then cosine from 1 to `end_ratio` at `total`."""
    if warmup > 0 and step < warmup:
        return step / warmup
    span = max(1, total - warmup)
    progress = min(1.0, (step - warmup) / span)
    return end_ratio + (1 - end_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class GeneratorWrapper(nn.Module):
    """`core` (the MedITok) + the trainable teacher adapters (`text_fc_norm` LN, `text_projection` Linear)."""

    def __init__(self, core: MedITok, teacher_dim: int | None):
        super().__init__()
        self.core = core
        if teacher_dim:
            self.text_fc_norm = nn.LayerNorm(teacher_dim)
            self.text_projection = nn.Linear(teacher_dim, core.config.embed_dim)
            nn.init.trunc_normal_(self.text_projection.weight, std=0.02)
            nn.init.zeros_(self.text_projection.bias)

    def forward(self, x: torch.Tensor, teacher_features: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        out = self.core(x)
        if teacher_features is not None:
            t = self.text_projection(self.text_fc_norm(teacher_features.to(self.text_projection.weight.dtype)))
            out["teacher_embedding"] = F.normalize(t.float(), dim=-1)
        return out


def _enable_grad_checkpointing(core: nn.Module) -> None:
    from torch.utils.checkpoint import checkpoint

    for blocks in (core.encoder.blocks, core.decoder.blocks):
        for block in blocks:
            forward = block.forward
            block.forward = lambda x, _f=forward: checkpoint(_f, x, use_reentrant=False)


@contextlib.contextmanager
def _scalar_safe_broadcast():
    """DeepSpeed 0.19 broadcasts every parameter as `p.data.view(torch.uint8)`, which fails for 0-d tensors such as
    `logit_scale` (its published shape is []). Within `deepspeed.initialize`, broadcast rank 0's parameters with a
    plain `torch.distributed.broadcast` instead (equivalent for ZeRO 0-2 without MoE / sequence parallelism)."""
    from deepspeed.runtime.engine import DeepSpeedEngine

    original = DeepSpeedEngine._broadcast_model

    def broadcast(engine):
        if torch.distributed.get_world_size() > 1:
            for p in engine.module.parameters():
                torch.distributed.broadcast(p.data, 0)

    DeepSpeedEngine._broadcast_model = broadcast
    try:
        yield
    finally:
        DeepSpeedEngine._broadcast_model = original


# ------------------------------------------------------------------------------------------------ trainer


class Trainer:
    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.out = Path(cfg.run.output_dir)
        self.ckpt_dir = self.out / "checkpoints"
        self.step = 0
        self.epoch = 0
        self.nonfinite_steps = 0  # steps skipped for a non-finite loss or gradient (whole run, resumes included)
        self.nonfinite_in_a_row = 0

    # ------------------------------------------------------------------------------------------- setup
    def _init_distributed(self) -> None:
        from meditok.data.distributed import start_deepspeed

        self.rank, self.world, self.device = start_deepspeed()
        self.cuda = self.device.type == "cuda"

    def _load_aux(self) -> None:
        """Every pretrained part, before the tokenizer is built: a missing file fails in seconds."""
        cfg = self.cfg
        self.teacher = None
        self.text_tower = None
        teacher_dim = None
        if cfg.teacher.kind == "vision":
            t = cfg.teacher
            self.teacher = load_vision_teacher(
                t.path,
                t.format,
                name=t.name,
                model_kwargs=t.model_kwargs,
                image_size=t.image_size,
                mean=t.mean,
                std=t.std,
                pooling=t.pooling,
            ).to(self.device)
            teacher_dim = self.teacher.dim
            if self.rank == 0:
                norm = (
                    f"mean {self.teacher.mean.flatten().tolist()}, std {self.teacher.std.flatten().tolist()}"
                    if self.teacher.normalise
                    else "no normalisation"
                )
                print(
                    f"teacher: {self.teacher.description}; {teacher_dim}-d, input "
                    f"{self.teacher.image_size[0]}x{self.teacher.image_size[1]} (nearest), {norm}",
                    file=sys.stderr,
                )
        elif cfg.teacher.kind == "text":
            self.text_tower = load_text_tower(
                cfg.teacher.path,
                cfg.teacher.format,
                checkpoint=cfg.teacher.checkpoint,
                context_length=cfg.teacher.context_length,
            ).to(self.device)
            teacher_dim = self.text_tower.config.output_dim
        self.teacher_dim = teacher_dim
        self.lpips = load_lpips(cfg.lpips.path, cfg.lpips.width_divisor).to(self.device) if cfg.lpips.enabled else None
        self.disc_backbone = (
            load_disc_backbone(cfg.disc.path, cfg.disc.format).to(self.device) if cfg.disc.enabled else None
        )

    def _build_core(self) -> tuple[MedITok, dict[str, torch.Tensor]]:
        cfg = self.cfg.model
        disc_init: dict[str, torch.Tensor] = {}
        if cfg.init_from:
            path = Path(cfg.init_from)
            if not path.exists():
                raise AuxModelError(f"model.init_from: file not found: {path}")
            if path.is_dir() and ((path / STATE_FILE).exists() or (path / "latest").is_file()):
                core_state, disc_init, state = read_core_state(path)  # drops the stage-1 text_* adapters
                core = MedITok.from_state_dict(core_state, checkpoint_model_config(path, state), source=str(path))
            else:
                core = MedITok.from_pretrained(path)
            if core.config.name != get_config(cfg.config).name:
                print(f"note: model.init_from is a {core.config.name!r} model; model.config={cfg.config!r} ignored")
        else:
            core = MedITok.from_config(cfg.config, seed=cfg.seed)
        core = core.to(self.device, torch.float32).train()
        if cfg.grad_checkpointing:
            _enable_grad_checkpointing(core)
        return core, disc_init

    def setup(self) -> Trainer:
        import deepspeed

        cfg = self.cfg
        check_writable(self.out)  # a read-only or impossible output_dir fails here, not at the first save
        self._init_distributed()
        self._load_aux()
        torch.manual_seed(cfg.run.seed)
        core, disc_init = self._build_core()
        self.model_config = core.config
        self.gen = GeneratorWrapper(core, self.teacher_dim).to(self.device)
        if cfg.optim.freeze_logit_scale:
            core.logit_scale.requires_grad_(False)
        total = cfg.run.steps
        o = cfg.optim
        g_warm, d_warm = steps_from_fraction(o.warmup, total), steps_from_fraction(o.disc_warmup, total)
        g_opt = torch.optim.AdamW(param_groups(self.gen, o.weight_decay), lr=o.lr, betas=o.betas, eps=o.eps)
        g_sched = torch.optim.lr_scheduler.LambdaLR(g_opt, lambda s: lr_factor(s, g_warm, total, o.lr_end_ratio))
        ds = {
            "train_micro_batch_size_per_gpu": cfg.data.batch_size,
            "gradient_accumulation_steps": 1,
            # DeepSpeed's ZeRO-0 clip_grad_norm_ fails on 0-d parameters (logit_scale); there we clip with torch
            # after the (already all-reduced) backward. ZeRO-1/2 clip flat partitions and are fine.
            "gradient_clipping": o.grad_clip if cfg.run.zero_stage > 0 else 0.0,
            "zero_optimization": {"stage": cfg.run.zero_stage},
            "bf16": {"enabled": cfg.run.precision == "bf16"},
            "steps_per_print": 10**9,
            "wall_clock_breakdown": False,
        }
        with _scalar_safe_broadcast():
            self.gen_engine, _, _, _ = deepspeed.initialize(
                model=self.gen, optimizer=g_opt, lr_scheduler=g_sched, config=dict(ds)
            )
        self.disc_engine = None
        if cfg.disc.enabled:
            torch.manual_seed(cfg.run.seed + 1)
            self.disc = DinoDiscriminator(self.disc_backbone).to(self.device)
            if disc_init:
                self.disc.load_state_dict(disc_init, strict=False)
            d_opt = torch.optim.AdamW(
                param_groups(self.disc, o.disc_weight_decay), lr=o.disc_lr, betas=o.disc_betas, eps=1e-8
            )
            d_sched = torch.optim.lr_scheduler.LambdaLR(d_opt, lambda s: lr_factor(s, d_warm, total, o.lr_end_ratio))
            self.disc_engine, _, _, _ = deepspeed.initialize(
                model=self.disc, optimizer=d_opt, lr_scheduler=d_sched, config=dict(ds)
            )
        self.disc_start = int(cfg.disc.start * total)
        self.disc_warmup = max(1, int(cfg.disc.warmup * total))
        self.daug = DiffAug(1.0, cfg.disc.cutout)
        self.bcr_aug = DiffAug(1.0, cfg.disc.bcr_cutout)
        self._build_data()
        # DiffAug and the discriminator's crops use the global RNG; ranks must differ, runs must repeat.
        torch.manual_seed(cfg.run.seed * 1000 + self.rank)
        if cfg.run.resume:
            self.load_checkpoint(cfg.run.resume)
        if self.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "config.yaml").write_text(__import__("yaml").safe_dump(cfg.to_dict(), sort_keys=False))
        return self

    def _build_data(self) -> None:
        from meditok.data import ImageDataset, ImageTextDataset, Preprocess, ResumableLoader

        d = self.cfg.data
        if not d.source or not Path(d.source).exists():
            raise AuxModelError(
                f"data.source: file not found: {d.source!r} (make it: meditok-data shard MANIFEST -o {d.source} "
                "--shard-size N)"
            )
        pre = Preprocess(size=d.image_size, train=d.augment, random_ct_window=d.augment and d.ct_windowing)
        cls = ImageTextDataset if self.cfg.teacher.kind == "text" else ImageDataset
        self.dataset = cls(
            d.source, pre, seed=d.seed, strict=d.strict, rank=self.rank, world_size=self.world, skip_log=d.skip_log
        )
        shards = self.dataset.shards
        streams = self.world * max(1, d.num_workers)
        if shards is not None and len(shards.shards) < streams:
            # Shards are dealt whole to the world_size x num_workers streams: a stream without one gives no batch.
            raise AuxModelError(
                f"data.source {d.source}: {len(shards.shards)} shard(s) ({shards.total} images) for "
                f"{self.world} rank(s) x {max(1, d.num_workers)} worker(s) = {streams} streams, and every stream needs "
                f"a shard of its own: re-shard with smaller shards (meditok-data shard MANIFEST -o {d.source} "
                f"--shard-size N, N <= {max(1, shards.total // streams)}), or use fewer ranks or data.num_workers"
            )
        self.loader = ResumableLoader(
            self.dataset,
            batch_size=d.batch_size,
            num_workers=d.num_workers,
            drop_last=True,
            # Its own generator: a new DataLoader iterator would otherwise draw its base seed from the global RNG,
            # so a resumed run (new iterator) and an uninterrupted one (same iterator) would diverge.
            generator=torch.Generator().manual_seed(d.seed),
        )
        self._iter = None

    def _next_batch(self) -> dict[str, Any]:
        for _ in range(2):
            if self._iter is None:
                self._iter = iter(self.loader)
            try:
                return next(self._iter)
            except StopIteration:
                self._iter = None
                self.epoch += 1
                self.loader.set_epoch(self.epoch)
        raise RuntimeError(
            f"data.source {self.cfg.data.source} yields fewer than batch_size={self.cfg.data.batch_size} images per "
            f"rank ({self.dataset.summary()} skipped)"
        )

    # -------------------------------------------------------------------------------------------- step
    def _teacher_features(self, x: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor | None:
        with torch.no_grad():
            if self.teacher is not None:  # nearest resize (+ the configured normalisation), as the reference
                return self.teacher(x)
            if self.text_tower is not None:
                return self.text_tower.encode_text(list(batch["caption"]), self.device).float()
        return None

    def train_step(self, batch: dict[str, Any]) -> dict[str, float]:
        cfg = self.cfg
        x = batch["image"].to(self.device, torch.float32)
        warm, fade = disc_schedules(self.step, self.disc_start, self.disc_warmup)
        use_gan = self.disc_engine is not None and warm > 0
        logs: dict[str, float] = {}
        t0, c0 = time.perf_counter(), time.process_time()

        # The module is called directly, not through engine.__call__: DeepSpeed's engine forward puts backward hooks
        # on its outputs that forbid the extra autograd.grad calls of the adaptive GAN weight. engine.backward()
        # still does the loss scaling, gradient all-reduce / ZeRO partitioning; the prologue those hooks would have
        # run is called explicitly in _backward().
        out = self.gen_engine.module(x, self._teacher_features(x, batch))
        x_hat = out["reconstruction"].float()
        rec = reconstruction_loss(x_hat, x, cfg.loss.l1, cfg.loss.l2)
        nll = rec
        if self.lpips is not None and x.shape[-2] >= 48:
            lp = self.lpips(x, x_hat)
            nll = nll + cfg.lpips.weight * lp
            logs["lpips"] = float(lp.detach())
        rest = cfg.loss.vq * out["vq_loss"]  # the terms that do not reach the parameters through x_hat
        if "teacher_embedding" in out and cfg.teacher.weight > 0:
            scale = out["logit_scale"].clamp(max=100.0)
            lc = clip_loss(out["embedding"].float(), out["teacher_embedding"], scale)
            rest = rest + cfg.teacher.weight * lc
            logs["clip"] = float(lc.detach())
        total = nll + rest
        lg = None
        if use_gan:
            self.disc.requires_grad_(False)
            lg = generator_loss(self.disc(self.daug(x_hat, fade)).float())
            self.disc.requires_grad_(True)
        finite = bool(torch.isfinite(total.detach() if lg is None else total.detach() + lg.detach()))
        if not all_ranks_true(finite, self.device):  # on any rank: no backward, no step anywhere
            return self._skip_nonfinite("loss", logs)
        if use_gan:
            # nll (L1/L2 + LPIPS) and lg (frozen discriminator) reach the parameters only through x_hat. Their
            # gradients at x_hat, each one backward pass through LPIPS / the discriminator, give both the adaptive
            # weight (through the last layer only) and the parameter gradients: backpropagating
            # sum(x_hat * (g_nll + wg * g_gan)) + rest from x_hat gives exactly d total / d params. The reference's
            # autograd.grad(nll, W_last), autograd.grad(lg, W_last) + total.backward() went through LPIPS and the
            # discriminator twice each.
            g_nll = torch.autograd.grad(nll, x_hat)[0]
            g_gan = torch.autograd.grad(lg, x_hat)[0]
            last = self.gen_engine.module.core.decoder.last_layer_weight()
            w = adaptive_weight_from_output(x_hat, g_nll, g_gan, last, cfg.disc.adaptive_min, cfg.disc.adaptive_max)
            wg = warm * cfg.disc.weight * w
            total = total.detach() + wg * lg.detach()  # logged value; the surrogate below carries the gradients
            self._backward(self.gen_engine, (x_hat * (g_nll + wg * g_gan)).sum() + rest)
            logs.update(gan_g=float(lg.detach()), gan_weight=float(wg))
        else:
            self._backward(self.gen_engine, total)
        norm = self._manual_clip(self.gen_engine)
        if norm is not None and not math.isfinite(norm):  # ZeRO-0: the all-reduced gradients, the same on all ranks
            self.gen_engine.zero_grad()
            return self._skip_nonfinite("gradients", logs)
        self.gen_engine.step()
        if getattr(self.gen_engine.optimizer, "overflow", False):  # ZeRO 1-2: DeepSpeed found them and skipped
            return self._skip_nonfinite("gradients", logs)
        logs["grad_norm"] = float(norm if norm is not None else self.gen_engine.get_global_grad_norm() or 0.0)
        logs["lr"] = float(self.gen_engine.get_lr()[0])
        core = self.gen_engine.module.core
        if core.logit_scale.requires_grad:
            with torch.no_grad():
                core.logit_scale.clamp_(0, math.log(100))

        if use_gan:
            # Real, fake and (with BCR) their strongly augmented copies through the discriminator in one batch:
            # augmentation and crop/resize are drawn per part, in the order of separate calls; the backbone, the
            # heads' GroupNorm and the losses treat each sample on its own, so only the number of passes changes.
            x_d, xh_d = x.detach(), x_hat.detach()
            parts = [self.disc.prepare(self.daug(x_d, fade)), self.disc.prepare(self.daug(xh_d, fade))]
            if cfg.disc.bcr > 0:
                parts += [self.disc.prepare(self.bcr_aug(x_d)), self.disc.prepare(self.bcr_aug(xh_d))]
            logits = self.disc_engine(torch.cat(parts), prepared=True).float().chunk(len(parts))
            real, fake = logits[0], logits[1]
            ld = hinge_d_loss(real, fake)
            loss_d = ld
            if cfg.disc.bcr > 0:
                bcr = cfg.disc.bcr * (F.mse_loss(logits[2], real) + F.mse_loss(logits[3], fake))
                loss_d = loss_d + bcr
                logs["bcr"] = float(bcr.detach())
            # A non-finite discriminator loss or gradient skips only the discriminator's update (counted).
            if all_ranks_true(bool(torch.isfinite(loss_d.detach())), self.device):
                self.disc_engine.backward(loss_d)
                d_norm = self._manual_clip(self.disc_engine)
                if d_norm is not None and not math.isfinite(d_norm):
                    self.disc_engine.zero_grad()
                    logs["disc_skipped"] = 1
                else:
                    self.disc_engine.step()
                    if getattr(self.disc_engine.optimizer, "overflow", False):
                        logs["disc_skipped"] = 1
            else:
                logs["disc_skipped"] = 1
            logs.update(disc=float(ld.detach()), disc_lr=float(self.disc_engine.get_lr()[0]))
        logs.update(
            loss=float(total.detach()),
            rec=float(rec.detach()),
            nll=float(nll.detach()),
            vq=float(out["vq_loss"].detach()),
            logit_scale=float(out["logit_scale"].detach()),
            step_time=time.perf_counter() - t0,
            step_cpu_time=time.process_time() - c0,  # this process's CPU seconds (all its threads)
        )
        self.step += 1
        self.nonfinite_in_a_row = 0
        logs["nonfinite_steps"] = self.nonfinite_steps
        return logs

    def _skip_nonfinite(self, what: str, logs: dict[str, float]) -> dict[str, float]:
        """A step whose loss or gradients are NaN/inf: nothing is applied, the batch is consumed and counted; after
        `run.max_nonfinite_steps` such steps in a row the run stops (`NonFiniteError`) instead of going on."""
        self.nonfinite_steps += 1
        self.nonfinite_in_a_row += 1
        self.step += 1
        limit = self.cfg.run.max_nonfinite_steps
        if self.rank == 0:
            print(
                f"meditok-train: step {self.step}: non-finite {what}, step skipped "
                f"({self.nonfinite_in_a_row} in a row, {self.nonfinite_steps} in all; the run stops at {limit} in a "
                "row: run.max_nonfinite_steps)",
                file=sys.stderr,
            )
        if self.nonfinite_in_a_row >= limit:
            raise NonFiniteError(
                f"{self.nonfinite_in_a_row} training steps in a row had a non-finite {what} (run.max_nonfinite_steps="
                f"{limit}; {self.nonfinite_steps} skipped in all, last at step {self.step}): stopping; the last "
                f"checkpoint holds finite weights. Check the data (data.strict=true names an unreadable image) or "
                "lower optim.lr"
            )
        return {
            **{k: v for k, v in logs.items() if k in ("lpips", "clip")},
            "nonfinite_skipped": what,
            "nonfinite_steps": self.nonfinite_steps,
        }

    @staticmethod
    def _backward(engine, loss: torch.Tensor) -> None:
        if engine.zero_optimization():
            engine._backward_prologue()
        engine.backward(loss)

    def _manual_clip(self, engine) -> float | None:
        """ZeRO-0: the total gradient norm (clipped to optim.grad_clip when > 0); None under ZeRO 1-2."""
        if self.cfg.run.zero_stage > 0:
            return None
        params = [p for p in engine.module.parameters() if p.grad is not None]
        clip = self.cfg.optim.grad_clip if self.cfg.optim.grad_clip > 0 else math.inf
        return float(torch.nn.utils.clip_grad_norm_(params, clip))

    # ------------------------------------------------------------------------------------------ loop
    def train(self) -> dict[str, Any]:
        cfg = self.cfg
        stop = min(cfg.run.steps, cfg.run.stop_after or cfg.run.steps)
        log_file = self.out / LOG_NAME
        writer = None
        if self.rank == 0 and cfg.run.tensorboard:
            with contextlib.suppress(Exception):
                from torch.utils.tensorboard import SummaryWriter

                writer = SummaryWriter(str(self.out / "tensorboard"))
        bar = None
        if self.rank == 0 and cfg.run.progress:
            from tqdm import tqdm

            bar = tqdm(total=stop, initial=self.step, desc=f"stage {cfg.stage}", dynamic_ncols=True, file=sys.stderr)
        history = []
        images_per_step = cfg.data.batch_size * self.world
        t_start = time.perf_counter()
        start_step = self.step
        batch = None
        while self.step < stop:
            batch = self._next_batch()
            logs = self.train_step(batch)
            history.append(logs)
            if self.rank == 0:
                if bar is not None:
                    bar.update(1)
                    if "loss" in logs:
                        bar.set_postfix(loss=f"{logs['loss']:.4f}", rec=f"{logs['rec']:.4f}")
                if self.step % cfg.run.log_every == 0 or self.step == stop:
                    elapsed = time.perf_counter() - t_start
                    record = {
                        "step": self.step,
                        "epoch": self.epoch,
                        **logs,
                        "codebook_usage": self.gen_engine.module.core.quantizer.usage_per_codebook(),
                        "steps_per_s": (self.step - start_step) / elapsed,
                        "images_per_s": (self.step - start_step) * images_per_step / elapsed,
                        "skipped_images": self.dataset.skipped,
                    }
                    append_record(log_file, record)  # one write per line; a torn last line reads as absent
                    if writer is not None:
                        for k, v in record.items():
                            if isinstance(v, int | float):
                                writer.add_scalar(k, v, self.step)
            if self.step % cfg.run.ckpt_every == 0 or self.step == stop:
                self.save_checkpoint()
        if bar is not None:
            bar.close()
        if writer is not None:
            writer.close()
        result: dict[str, Any] = {"steps": self.step, "history": history}
        if self.rank == 0 and cfg.run.plots and batch is not None:
            result.update(self.write_report(batch["image"]))
        if self.rank == 0 and self.step == cfg.run.steps:
            try:
                export_checkpoint(self.ckpt_dir / f"step-{self.step:08d}", self.out / "export")
            except OSError as exc:
                raise DiskError(
                    f"{self.out / 'export'}: export failed ({exc.strerror or exc}; {free_space(self.out)}); the "
                    f"checkpoint is complete: meditok export {self.ckpt_dir} DIR"
                ) from None
        barrier()
        return result

    def write_report(self, images: torch.Tensor) -> dict[str, Any]:
        """loss.png (the whole log.jsonl, resumed parts included) and reconstructions.png of `images`."""
        from .report import psnr, save_loss_curve, save_reconstruction_grid

        records = [r for r in read_records(self.out / LOG_NAME) if "step" in r]
        save_loss_curve(records, self.out / "loss.png")
        core = self.gen_engine.module.core
        was_training = core.training
        core.eval()
        with torch.no_grad():
            x = images.to(self.device, torch.float32)
            x_hat = core(x)["reconstruction"].float()
        core.train(was_training)
        save_reconstruction_grid(x, x_hat, self.out / "reconstructions.png")
        return {"psnr": psnr(x, x_hat)}

    # ------------------------------------------------------------------------------------- checkpoints
    def save_checkpoint(self) -> Path:
        """Both engines + per-rank RNG/data state into `.tmp-step-N`, then one rename to `step-N` (atomic)."""
        return save_checkpoint(self)

    def load_checkpoint(self, path: str) -> None:
        load_checkpoint(self, path)

    def close(self) -> None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.barrier()
            torch.distributed.destroy_process_group()


STANDIN_NAMES = ("vision_teacher", "text_tower", "lpips", "disc_backbone")  # the folders make_standins(DIR) writes


def standin_hint(message: str) -> str:
    """For a pretrained part missing at a stand-in path (``DIR/<stand-in name>``): the command that makes it."""
    _, found, missing = message.partition("file not found: ")
    if not found:
        return ""
    path = Path(missing.strip().strip("'\""))
    for folder in (path, path.parent):
        if folder.name in STANDIN_NAMES:
            return (
                f'; random stand-ins for a trial run: python -c "from meditok.tokenizer.training.testing import '
                f"make_standins; make_standins('{folder.parent}')\" (a real run points the key at the pretrained file)"
            )
    return ""


def main(argv: list[str] | None = None) -> int:
    import argparse

    from .config import load_config

    parser = argparse.ArgumentParser(description="Train MedITok (stage 1 or 2) under DeepSpeed, torchrun or python")
    parser.add_argument("--config", required=True, help="YAML config (packages/tokenizer/configs/*.yaml)")
    parser.add_argument("--resume", default=None, help="checkpoint directory, or 'auto'")
    parser.add_argument("--local_rank", type=int, default=-1, help="set by the deepspeed launcher")
    parser.add_argument("overrides", nargs="*", help="section.key=value, e.g. run.steps=100")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.overrides + ([f"run.resume={args.resume}"] if args.resume else []))
    trainer = Trainer(cfg)
    try:
        trainer.setup()
    except (AuxModelError, FileNotFoundError, UnsafeCheckpointError, DiskError) as exc:
        print(f"meditok-train: error: {exc}{standin_hint(str(exc))}", file=sys.stderr)
        return 2
    try:
        result = trainer.train()
    except Exception as exc:
        from meditok.data import MedicalImageError

        if not isinstance(exc, MedicalImageError | NonFiniteError | DiskError):
            raise
        # data.strict: an unreadable image stops the run with one line naming it (lenient mode skips and counts).
        print(f"meditok-train: error: {exc}", file=sys.stderr)
        return 2
    if trainer.rank == 0:
        last = result["history"][-1] if result["history"] else {}
        summary = {"final_step": result["steps"], "loss": last.get("loss"), "rec": last.get("rec")}
        if "psnr" in result:
            summary["psnr_last_batch"] = result["psnr"]
        print(json.dumps(summary))
    trainer.close()
    return 0
