import pytest
import torch
import torch.nn.functional as F

from meditok.tokenizer import MedITok
from meditok.tokenizer.model import AttnProjection, Upsample2d


@pytest.mark.parametrize(("height", "width"), [(256, 256), (128, 128), (256, 384), (64, 48)])
def test_shapes_and_code_ranges(tiny, height, width):
    x = torch.rand(2, 3, height, width, generator=torch.Generator().manual_seed(height + width)) * 2 - 1
    codes = tiny.encode(x)
    grid = (height // 16, width // 16)
    assert codes.shape == (2, 8, grid[0] * grid[1]) and codes.dtype == torch.int64
    assert 0 <= int(codes.min()) and int(codes.max()) < 4096
    images = tiny.decode(codes, grid=grid)
    assert images.shape == (2, 3, height, width) and images.dtype == torch.float32
    assert images.min() >= -1 and images.max() <= 1
    latents = tiny.quantized_latents(x)
    assert latents.shape == (2, grid[0] * grid[1], 64)
    chunk_norms = latents.reshape(2, -1, 8, 8).norm(dim=-1)
    torch.testing.assert_close(chunk_norms, torch.ones_like(chunk_norms))
    embedding = tiny.embed_image(x)
    assert embedding.shape == (2, tiny.config.embed_dim)
    torch.testing.assert_close(embedding.norm(dim=-1), torch.ones(2))
    assert tiny.features(x).shape == (2, tiny.config.width)


@torch.no_grad()
def test_quantized_latents_are_the_codebook_vectors_of_the_codes(tiny, images):
    codes = tiny.encode(images)
    latents = tiny.quantized_latents(images)
    for k, codebook in enumerate(tiny.quantizer.codebooks):
        expected = F.normalize(codebook.codebook.weight, dim=1)[codes[:, k]]
        torch.testing.assert_close(latents[..., 8 * k : 8 * k + 8], expected)


@torch.no_grad()
def test_codes_are_cosine_nearest_neighbours(tiny, images):
    latents = tiny._latents(images)
    codes = tiny.encode(images)
    for k, codebook in enumerate(tiny.quantizer.codebooks):
        z = F.normalize(latents[..., 8 * k : 8 * k + 8], dim=-1)
        sims = z @ F.normalize(codebook.codebook.weight, dim=1).T
        chosen = sims.gather(-1, codes[:, k].unsqueeze(-1)).squeeze(-1)
        torch.testing.assert_close(chosen, sims.max(dim=-1).values)


def test_deterministic(tiny, images):
    assert torch.equal(tiny.encode(images), tiny.encode(images))
    codes = tiny.encode(images)
    assert torch.equal(tiny.decode(codes), tiny.decode(codes))
    assert torch.equal(tiny.embed_image(images), tiny.embed_image(images))


def test_decode_accepts_grid_shaped_codes(tiny, images):
    codes = tiny.encode(images)
    assert torch.equal(tiny.decode(codes.reshape(2, 8, 4, 4)), tiny.decode(codes))


def test_reconstruct_equals_decode_of_encode(tiny, images):
    torch.testing.assert_close(tiny.reconstruct(images), tiny.decode(tiny.encode(images)))


@pytest.mark.parametrize(("in_dim", "out_dim", "heads"), [(128, 64, 2), (64, 128, 2), (1024, 64, 16)])
def test_attn_projections_are_causal(in_dim, out_dim, heads):
    torch.manual_seed(0)
    proj = AttnProjection(in_dim, out_dim, heads).eval()
    with torch.no_grad():
        for p in proj.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x = torch.randn(1, 12, in_dim)
    changed = x.clone()
    changed[:, 7] += 1.0
    with torch.no_grad():
        a, b = proj(x), proj(changed)
    assert torch.equal(a[:, :7], b[:, :7]), "a later position changed an earlier output"
    assert not torch.allclose(a[:, 7:], b[:, 7:]), "the changed position and later ones must see the change"


def test_encoder_trunk_is_bidirectional(tiny):
    # Unlike the projections, the ViT blocks see every position: changing the last token changes the first.
    x = torch.randn(1, 6, tiny.config.width)
    changed = x.clone()
    changed[:, -1] += torch.randn(tiny.config.width)
    with torch.no_grad():
        assert not torch.allclose(tiny.encoder.blocks(x)[:, 0], tiny.encoder.blocks(changed)[:, 0])


@pytest.mark.parametrize("size", [(5, 7), (16, 16), (1, 3)])
def test_fast_upsample_equals_nearest_then_conv(size):
    torch.manual_seed(0)
    layer = Upsample2d(6, 4).eval()
    x = torch.randn(2, 6, *size)
    literal = layer.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
    with torch.no_grad():
        fast = layer(x)
    torch.testing.assert_close(fast, literal.detach(), atol=1e-5, rtol=1e-5)


def test_training_forward_gradients_reach_encoder_codebooks_and_decoder(images):
    model = MedITok.from_config("tiny", seed=3).train()
    out = model(images)
    assert out["reconstruction"].shape == images.shape
    loss = F.mse_loss(out["reconstruction"], images) + out["vq_loss"] + out["embedding"].sum()
    loss.backward()
    for name in (
        "encoder.patch_embed.backbone.stem.conv1.weight",
        "quant_proj.proj.weight",
        "quantizer.codebooks.3.codebook.weight",
        "decoder.up_conv4.conv2.weight",
        "projection.weight",
    ):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name
    assert model.encoder.pos_embed.grad is None


def test_vq_loss_and_usage_statistics():
    model = MedITok.from_config("tiny", seed=0).train()
    z = torch.randn(2, 10, 64)
    z_q, loss, usage = model.quantizer(z)
    codes = model.quantizer.latents_to_codes(z)
    q = model.quantizer.codes_to_latents(codes)
    zn = F.normalize(z.reshape(2, 10, 8, 8), dim=-1).reshape(2, 10, 64)
    torch.testing.assert_close(z_q, q)  # straight-through: the forward value is the code vector
    expected = 1.25 * F.mse_loss(q, zn)  # beta * commitment + codebook term, equal in value
    torch.testing.assert_close(loss, expected)
    shares = [torch.bincount(codes[:, k].flatten(), minlength=4096).float() / 20 for k in range(8)]
    torch.testing.assert_close(model.quantizer.codebooks[0].vocab_usage, shares[0])
    expected_usage = torch.stack([(s > 0.01 / 4096).float().mean() * 100 for s in shares]).mean()
    torch.testing.assert_close(usage, expected_usage)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_trunk_keeps_quantizer_in_fp32(dtype, tiny_weights, images):
    tok = MedITok.from_pretrained(tiny_weights["directory"], dtype=dtype)
    assert tok.encoder.norm.weight.dtype == dtype and tok.decoder.norm.weight.dtype == dtype
    assert tok.quant_proj.proj.weight.dtype == torch.float32
    assert tok.quantizer.codebooks[0].codebook.weight.dtype == torch.float32
    codes = tok.encode(images)
    assert codes.dtype == torch.int64 and codes.shape == (2, 8, 16)
    assert tok.decode(codes).dtype == torch.float32
