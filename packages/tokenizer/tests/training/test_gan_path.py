"""The GAN path's shortcuts keep the reference's maths: vectorised DiffAug, one batched discriminator pass in the D
step, and the adaptive weight + generator gradients from the losses' gradients at x_hat (one backward pass through
LPIPS and the discriminator instead of two). Checked against straightforward re-implementations, down to a whole
`Trainer.train_step` on the tiny config."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from train_helpers import CONFIGS

from meditok.tokenizer.auxiliary import ViT, ViTConfig
from meditok.tokenizer.training.discriminator import DinoDiscriminator
from meditok.tokenizer.training.losses import (
    DiffAug,
    adaptive_weight,
    adaptive_weight_from_output,
    clip_loss,
    disc_schedules,
    generator_loss,
    hinge_d_loss,
    reconstruction_loss,
)


def _loop_translate(x, translation=0.125):
    """The per-image loop the vectorised translation replaced (same RNG draws, in the same order)."""
    b, _, h, w = x.shape
    sh, sw = int(h * translation + 0.5), int(w * translation + 0.5)
    dy = torch.randint(-sh, sh + 1, (b,)).tolist()
    dx = torch.randint(-sw, sw + 1, (b,)).tolist()
    padded = F.pad(x, (sw, sw, sh, sh))
    return torch.stack([padded[i, :, sh + dy[i] : sh + dy[i] + h, sw + dx[i] : sw + dx[i] + w] for i in range(b)])


@pytest.mark.parametrize("shape", [(5, 3, 16, 16), (2, 3, 24, 40)])
def test_diffaug_translation_equals_the_per_image_loop(shape):
    x = torch.randn(shape, requires_grad=True)
    weight = torch.randn(shape)
    torch.manual_seed(7)
    got = DiffAug(1.0, cutout=0.0)(x)
    rng_got = torch.random.get_rng_state()
    (g_got,) = torch.autograd.grad((got * weight).sum(), x)
    torch.manual_seed(7)
    assert float(torch.rand(())) < 1.0  # DiffAug's p-draw
    expected = _loop_translate(x)
    (g_exp,) = torch.autograd.grad((expected * weight).sum(), x)
    assert torch.equal(got, expected) and torch.equal(g_got, g_exp)
    assert torch.equal(rng_got, torch.random.get_rng_state())
    assert not torch.equal(got, x)  # it did move something


def _disc(seed=0):
    torch.manual_seed(seed)
    backbone = ViT(ViTConfig(image_size=56, patch_size=14, width=32, depth=3, num_heads=2, layer_scale=True))
    return DinoDiscriminator(backbone)


def test_batched_discriminator_pass_equals_separate_calls():
    disc = _disc()
    parts = [torch.rand(3, 3, 64, 64) * 2 - 1 for _ in range(4)]  # 64 -> 56: random crop or area resize per call
    for seed in range(4):  # both resize branches
        torch.manual_seed(seed)
        separate = [disc(p) for p in parts]
        rng_separate = torch.random.get_rng_state()
        torch.manual_seed(seed)
        batched = disc(torch.cat([disc.prepare(p) for p in parts]), prepared=True).chunk(4)
        assert torch.equal(rng_separate, torch.random.get_rng_state())
        for a, b in zip(separate, batched):
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)


class _Toy(nn.Module):
    """A generator whose output goes through a last conv, and a loss term that bypasses the output (like VQ/CLIP)."""

    def __init__(self):
        super().__init__()
        self.body = nn.Conv2d(3, 8, 3, padding=1)
        self.last = nn.Conv2d(8, 3, 3, padding=1)
        self.side = nn.Parameter(torch.randn(4))

    def forward(self, x):
        return self.last(F.gelu(self.body(x))), (self.side**2).sum() + (self.body.weight**2).mean()


def test_gradients_at_the_output_equal_the_reference_backward():
    torch.manual_seed(0)
    gen = _Toy()
    lpips_like = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3)).requires_grad_(False)
    disc = _disc(1).requires_grad_(False)
    x = torch.rand(2, 3, 28, 28) * 2 - 1
    params = list(gen.parameters())

    def losses():
        x_hat, rest = gen(x)
        nll = reconstruction_loss(x_hat, x) + (lpips_like(x) - lpips_like(x_hat)).pow(2).mean()
        lg = generator_loss(disc(x_hat))
        return x_hat, nll, rest, lg

    # Reference (taming / UniTok): autograd.grad against the last layer, then backward of the weighted total.
    torch.manual_seed(3)
    x_hat, nll, rest, lg = losses()
    w_ref = adaptive_weight(nll, lg, gen.last.weight)
    grads_ref = torch.autograd.grad(nll + rest + 0.7 * w_ref * lg, params)
    # The trainer's path: gradients at x_hat, the weight through the last layer, one surrogate backward.
    torch.manual_seed(3)
    x_hat, nll, rest, lg = losses()
    g_nll = torch.autograd.grad(nll, x_hat)[0]
    g_gan = torch.autograd.grad(lg, x_hat)[0]
    w = adaptive_weight_from_output(x_hat, g_nll, g_gan, gen.last.weight)
    grads = torch.autograd.grad((x_hat * (g_nll + 0.7 * w * g_gan)).sum() + rest, params)

    assert 0.015 < float(w_ref) < 1e4  # not clamped, so the ratio itself is compared
    torch.testing.assert_close(w, w_ref, rtol=1e-5, atol=0)
    for g, r in zip(grads, grads_ref):  # float32 sums in another order: tolerance relative to the tensor's scale
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-6 * float(r.abs().max()))


def test_train_step_gradients_equal_the_reference_formulation(assets, tmp_path, monkeypatch):
    """A whole GAN-on `train_step` (tiny, 64 px, in-process, ZeRO-0 fp32): the generator and discriminator
    gradients it hands to the optimisers equal those of the plain reference computation from the same state."""
    for key, value in {"DS_ACCELERATOR": "cpu", "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29643")
    from meditok.tokenizer.training import load_config
    from meditok.tokenizer.training.trainer import Trainer

    cfg = load_config(
        CONFIGS / "tiny-cpu-stage1.yaml",
        [
            f"data.source={assets['shards']}",
            "data.image_size=64",
            "data.batch_size=3",
            f"lpips.path={assets['lpips']}",
            f"teacher.path={assets['vision_teacher']}",
            f"disc.path={assets['disc_backbone']}",
            f"run.output_dir={tmp_path}",
            "run.steps=20",  # GAN warm-up 2 steps, blur fading over 4: step 1 has both at 0.5 / 0.75
            "optim.grad_clip=0",  # compare raw gradients
            "run.progress=false",
            "run.tensorboard=false",
        ],
    )
    t = Trainer(cfg).setup()
    try:
        t.step = 1
        warm, fade = disc_schedules(1, t.disc_start, t.disc_warmup)
        assert (warm, fade) == (0.5, 0.75)
        batch = t._next_batch()
        gen0, disc0 = copy.deepcopy(t.gen_engine.module), copy.deepcopy(t.disc)
        rng = torch.random.get_rng_state()

        captured = {}
        for name, engine in (("gen", t.gen_engine), ("disc", t.disc_engine)):

            def step(*args, _engine=engine, _name=name, _orig=engine.step, **kwargs):
                captured[_name] = [p.grad.clone() for p in _engine.module.parameters() if p.requires_grad]
                return _orig(*args, **kwargs)

            monkeypatch.setattr(engine, "step", step)
        logs = t.train_step(batch)

        # The reference: the same state and random stream, written out plainly.
        torch.random.set_rng_state(rng)
        x = batch["image"].float()
        with torch.no_grad():
            features = t.teacher(x)
        out = gen0(x, features)
        x_hat = out["reconstruction"].float()
        nll = reconstruction_loss(x_hat, x, 0.2, 1.0) + t.lpips(x, x_hat)
        lc = clip_loss(out["embedding"].float(), out["teacher_embedding"], out["logit_scale"].clamp(max=100.0))
        disc0.requires_grad_(False)
        lg = generator_loss(disc0(DiffAug(1.0, 0.2)(x_hat, fade)).float())
        disc0.requires_grad_(True)
        w = adaptive_weight(nll, lg, gen0.core.decoder.last_layer_weight(), 0.015, 1e4)
        total = nll + out["vq_loss"] + 0.1 * lc + warm * 0.4 * w * lg
        gen_params = [p for p in gen0.parameters() if p.requires_grad]
        gen_ref = torch.autograd.grad(total, gen_params, allow_unused=True)

        xd, xhd = x.detach(), x_hat.detach()
        aug, bcr_aug = DiffAug(1.0, 0.2), DiffAug(1.0, 0.2)
        real, fake = disc0(aug(xd, fade)).float(), disc0(aug(xhd, fade)).float()
        loss_d = hinge_d_loss(real, fake) + 4.0 * (
            F.mse_loss(disc0(bcr_aug(xd)).float(), real) + F.mse_loss(disc0(bcr_aug(xhd)).float(), fake)
        )
        disc_ref = torch.autograd.grad(loss_d, [p for p in disc0.parameters() if p.requires_grad])
    finally:
        t.close()

    assert logs["loss"] == pytest.approx(float(total.detach()), rel=1e-5)
    assert logs["gan_weight"] == pytest.approx(warm * 0.4 * float(w), rel=1e-4)
    assert math.isfinite(logs["bcr"]) and logs["bcr"] > 0
    assert len(captured["gen"]) == len(gen_ref) and len(captured["disc"]) == len(disc_ref)
    for got_all, ref_all in ((captured["gen"], gen_ref), (captured["disc"], disc_ref)):
        ref_all = [torch.zeros_like(g) if r is None else r for g, r in zip(got_all, ref_all)]
        scale = max(float(r.abs().max()) for r in ref_all)  # float32 sums in another order: absolute to the scale
        for got, ref in zip(got_all, ref_all):
            torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-6 * scale)
        flat_got, flat_ref = torch.cat([g.flatten() for g in got_all]), torch.cat([r.flatten() for r in ref_all])
        assert float((flat_got - flat_ref).norm() / flat_ref.norm()) < 1e-5
