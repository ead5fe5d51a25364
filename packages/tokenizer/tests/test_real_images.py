"""The tokenizer on real medical images from offline registry packages (pydicom-data CT, scikit-image fundus)."""

import numpy as np
import torch
import torch.nn.functional as F

from meditok.tokenizer import MedITok
from meditok.tokenizer.preprocessing import preprocess


def _real_ct_hu() -> np.ndarray:
    from pydicom import dcmread
    from pydicom.data import get_testdata_file

    ds = dcmread(get_testdata_file("693_UNCI.dcm"))  # 512x512 head CT (NEMA WG04), via pydicom-data
    return ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)


def _real_fundus() -> np.ndarray:
    import skimage.data

    return skimage.data.retina()  # 1411x1411x3 uint8, CC0


def test_real_ct_slice_tokenizes_and_decodes(tiny):
    hu = _real_ct_hu()
    assert hu.shape == (512, 512) and hu.min() < -900 and hu.max() > 1000  # really a CT in Hounsfield units
    windowed = np.clip((hu + 1000) / 2000, 0, 1)  # the reference's common window (-1000, 1000)
    x = preprocess(windowed, size=128)
    codes = tiny.encode(x)
    assert codes.shape == (1, 8, 64)
    assert torch.equal(codes, tiny.encode(x))
    # Air outside the head is uniform, so its tokens share codes; the anatomy is varied, so codes vary.
    assert codes.unique().numel() > 8
    assert tiny.decode(codes).shape == (1, 3, 128, 128)


def test_training_step_learns_to_reconstruct_a_real_fundus_photo():
    x = preprocess(_real_fundus(), size=64)
    model = MedITok.from_config("tiny", seed=0).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(40):
        out = model(x)
        loss = F.mse_loss(out["reconstruction"], x) + out["vq_loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(F.mse_loss(out["reconstruction"], x)))
    assert losses[-1] < 0.5 * losses[0], losses


def test_real_ct_and_fundus_give_different_codes_and_embeddings(tiny):
    ct = preprocess(np.clip((_real_ct_hu() + 1000) / 2000, 0, 1), size=64)
    fundus = preprocess(_real_fundus(), size=64)
    assert not torch.allclose(tiny.embed_image(ct), tiny.embed_image(fundus))
    assert not torch.equal(tiny.encode(ct), tiny.encode(fundus))
