"""Loss functions of the two-stage recipe (spec §2.3), as small pure functions that tests check by hand."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def reconstruction_loss(x_hat: torch.Tensor, x: torch.Tensor, l1: float = 0.2, l2: float = 1.0) -> torch.Tensor:
    """0.2 * L1 + 1.0 * MSE (means over all elements)."""
    return l1 * F.l1_loss(x_hat, x) + l2 * F.mse_loss(x_hat, x)


def clip_loss(image: torch.Tensor, teacher: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE on l2-normalised features (OpenCLIP ClipLoss, local_loss=True, gather_with_grad=True).

    Under torch.distributed the other ranks' features are gathered with gradients; each rank scores its own rows
    against all columns, labels offset by rank * B.
    """
    rank = 0
    all_image, all_teacher = image, teacher
    if (
        torch.distributed.is_available()
        and torch.distributed.is_initialized()
        and torch.distributed.get_world_size() > 1
    ):
        import torch.distributed.nn as dist_nn

        rank = torch.distributed.get_rank()
        all_image = torch.cat(dist_nn.all_gather(image), dim=0)
        all_teacher = torch.cat(dist_nn.all_gather(teacher), dim=0)
    logits_per_image = logit_scale * image @ all_teacher.T
    logits_per_teacher = logit_scale * teacher @ all_image.T
    labels = torch.arange(image.shape[0], device=image.device) + rank * image.shape[0]
    return (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_teacher, labels)) / 2


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """mean(relu(1 - D(x))) + mean(relu(1 + D(x_hat))), halved as in taming / UniTok."""
    return (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean()) / 2


def generator_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    return -logits_fake.mean()


def adaptive_weight(
    nll: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor, low: float = 0.015, high: float = 1e4
) -> torch.Tensor:
    """||d nll / d W_last|| / (||d g_loss / d W_last|| + 1e-6), clamped to [low, high] and detached."""
    g_nll = torch.autograd.grad(nll, last_layer, retain_graph=True)[0]
    g_gan = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    return (g_nll.norm() / (g_gan.norm() + 1e-6)).clamp(low, high).detach()


def adaptive_weight_from_output(
    output: torch.Tensor,
    grad_nll: torch.Tensor,
    grad_gan: torch.Tensor,
    last_layer: torch.Tensor,
    low: float = 0.015,
    high: float = 1e4,
) -> torch.Tensor:
    """`adaptive_weight` from the two losses' gradients w.r.t. the decoder `output` (when both losses reach the
    last layer only through it): d L / d W_last = (d output / d W_last)^T (d L / d output), so two backward passes
    through the last layer replace two through LPIPS and the discriminator. The same value up to rounding."""
    g_nll = torch.autograd.grad(output, last_layer, grad_outputs=grad_nll, retain_graph=True)[0]
    g_gan = torch.autograd.grad(output, last_layer, grad_outputs=grad_gan, retain_graph=True)[0]
    return (g_nll.norm() / (g_gan.norm() + 1e-6)).clamp(low, high).detach()


def disc_schedules(step: int, start: int, warmup: int) -> tuple[float, float]:
    """(warm-up factor 0 -> 1 over `warmup` steps after `start`, fade-blur factor 1 -> 0 over 2 * warmup)."""
    it = step - start
    if it < 0:
        return 0.0, 1.0
    warm = min(1.0, it / warmup) if warmup > 0 else 1.0
    fade = 1.0 - (min(1.0, it / (2 * warmup)) if warmup > 0 else 1.0)
    return warm, fade


class DiffAug:
    """Differentiable augmentation for the discriminator: random translation (1/8), cutout, and a blur that fades
    out during the GAN warm-up. Uses the global torch RNG, whose state is checkpointed, so resume is exact."""

    def __init__(self, prob: float = 1.0, cutout: float = 0.2, translation: float = 0.125):
        self.prob = prob
        self.cutout = cutout
        self.translation = translation

    def __call__(self, x: torch.Tensor, fade_blur: float = 0.0) -> torch.Tensor:
        if fade_blur > 1e-6:
            blurred = F.avg_pool2d(x, 3, 1, 1, count_include_pad=False)
            x = x + fade_blur * (blurred - x)
        if torch.rand(()) >= self.prob:
            return x
        b, _, h, w = x.shape
        if self.translation > 0:
            # Shift each image by its own (dy, dx) with zero fill: one gather from the padded batch (the same
            # values and RNG draws as cropping each padded image in a Python loop, in one op instead of b).
            sh, sw = int(h * self.translation + 0.5), int(w * self.translation + 0.5)
            dy = torch.randint(-sh, sh + 1, (b,))
            dx = torch.randint(-sw, sw + 1, (b,))
            rows = ((sh + dy)[:, None] + torch.arange(h)).to(x.device)  # [b, h] rows of the padded image
            cols = ((sw + dx)[:, None] + torch.arange(w)).to(x.device)  # [b, w]
            padded = F.pad(x, (sw, sw, sh, sh))
            x = padded.gather(2, rows[:, None, :, None].expand(b, x.shape[1], h, padded.shape[-1]))
            x = x.gather(3, cols[:, None, None, :].expand(b, x.shape[1], h, w))
        if self.cutout > 0:
            ch, cw = int(h * self.cutout + 0.5), int(w * self.cutout + 0.5)
            cy = torch.randint(0, h + (1 - ch % 2), (b, 1, 1))
            cx = torch.randint(0, w + (1 - cw % 2), (b, 1, 1))
            ys = torch.arange(h).view(1, h, 1)
            xs = torch.arange(w).view(1, 1, w)
            hole = ((ys - cy).abs() <= ch // 2) & ((xs - cx).abs() <= cw // 2)
            x = x * (~hole).unsqueeze(1).to(x.dtype).to(x.device)
        return x
