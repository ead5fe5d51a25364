"""Multi-codebook vector quantizer (MCQ), spec §1.3.

The 64-d latent is split into 8 chunks of 8 dims; each chunk is quantized on the unit sphere by its own 4096-entry
codebook (cosine nearest neighbour). Codes are local per sub-codebook (0..4095) and stacked as [B, 8, L].
Codebooks are learned by gradient (no EMA); `vocab_usage` is a logged statistic only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SubCodebook(nn.Module):
    """One sub-codebook. Module and buffer names match the published state dict."""

    def __init__(self, codebook_size: int, code_dim: int, beta: float = 0.25):
        super().__init__()
        self.beta = beta
        self.codebook_size = codebook_size
        self.register_buffer("vocab_usage", torch.zeros(codebook_size))
        self.codebook = nn.Embedding(codebook_size, code_dim)
        self.usage_updates = 0

    def init_uniform(self) -> None:
        # The reference's init_vocab(-1): uniform(+-dim^-0.5 / 36).
        bound = self.codebook.weight.shape[1] ** -0.5 / 36
        nn.init.uniform_(self.codebook.weight, -bound, bound)

    def normalized_codebook(self) -> torch.Tensor:
        return F.normalize(self.codebook.weight.float(), dim=1)

    def lookup(self, z: torch.Tensor) -> torch.Tensor:
        """Code indices for latents z [..., code_dim] (any scale; compared by cosine)."""
        z = F.normalize(z.float(), dim=-1)
        return torch.argmax(z @ self.normalized_codebook().T, dim=-1)

    def embed(self, indices: torch.Tensor) -> torch.Tensor:
        return F.embedding(indices, self.normalized_codebook())

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Straight-through quantization with the VQ loss; returns (z_q, loss, usage %)."""
        z = F.normalize(z.float(), dim=-1)
        codebook = self.normalized_codebook()
        indices = torch.argmax(z.detach() @ codebook.T, dim=-1)
        q = F.embedding(indices, codebook)
        loss = self.beta * F.mse_loss(q.detach(), z) + F.mse_loss(q, z.detach())
        z_q = z + (q - z).detach()
        usage = self._record_usage(indices) if self.training else torch.zeros((), device=z.device)
        return z_q, loss, usage

    @torch.no_grad()
    def _record_usage(self, indices: torch.Tensor) -> torch.Tensor:
        counts = torch.bincount(indices.flatten(), minlength=self.codebook_size).float()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(counts)
        share = counts / counts.sum().clamp_min(1)
        if self.usage_updates == 0:
            self.vocab_usage.copy_(share)
        else:
            momentum = 0.9 if self.usage_updates < 100 else 0.99
            self.vocab_usage.mul_(momentum).add_(share, alpha=1 - momentum)
        self.usage_updates += 1
        return (share > 0.01 / self.codebook_size).float().mean() * 100


class MultiCodebookQuantizer(nn.Module):
    def __init__(self, num_codebooks: int, codebook_size: int, latent_dim: int, beta: float = 0.25):
        super().__init__()
        self.num_codebooks = num_codebooks
        self.codebook_size = codebook_size
        self.code_dim = latent_dim // num_codebooks
        self.codebooks = nn.ModuleList(SubCodebook(codebook_size, self.code_dim, beta) for _ in range(num_codebooks))

    def latents_to_codes(self, latents: torch.Tensor) -> torch.Tensor:
        """[B, L, latent_dim] -> int64 [B, num_codebooks, L]."""
        chunks = latents.split(self.code_dim, dim=-1)
        return torch.stack([cb.lookup(chunk) for cb, chunk in zip(self.codebooks, chunks)], dim=1)

    def codes_to_latents(self, codes: torch.Tensor) -> torch.Tensor:
        """int [B, num_codebooks, L] or [B, num_codebooks, h, w] -> [B, L, latent_dim] (unit-norm chunks)."""
        codes = codes.flatten(start_dim=2)
        return torch.cat([cb.embed(codes[:, k]) for k, cb in enumerate(self.codebooks)], dim=-1)

    def forward(self, latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Training path: (straight-through latents, mean VQ loss, mean usage %)."""
        outputs = [cb(chunk) for cb, chunk in zip(self.codebooks, latents.split(self.code_dim, dim=-1))]
        z_q = torch.cat([o[0] for o in outputs], dim=-1)
        loss = torch.stack([o[1] for o in outputs]).mean()
        usage = torch.stack([o[2] for o in outputs]).mean()
        return z_q, loss, usage

    def usage_per_codebook(self) -> list[float]:
        """Share of codes (in %) whose running selection share exceeds 0.01 / codebook_size, per sub-codebook."""
        return [float((cb.vocab_usage > 0.01 / self.codebook_size).float().mean() * 100) for cb in self.codebooks]
