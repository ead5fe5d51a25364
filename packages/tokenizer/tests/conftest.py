from __future__ import annotations

import pytest
import torch

from meditok.tokenizer import MedITok


@pytest.fixture(scope="session")
def tiny() -> MedITok:
    return MedITok.from_config("tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory, tiny) -> dict:
    """The tiny model saved in each accepted on-disk format."""
    root = tmp_path_factory.mktemp("weights")
    core = {k: v.clone() for k, v in tiny.state_dict().items()}
    bare = root / "bare.pth"
    torch.save(core, bare)
    training = root / "training_ckpt.pth"
    wrapper = {f"core.{k}": v for k, v in core.items()}
    wrapper.update(
        {
            "text_encoder.proj.weight": torch.zeros(4, 4),
            "text_fc_norm.weight": torch.ones(8),
            "text_fc_norm.bias": torch.zeros(8),
            "text_projection.weight": torch.zeros(8, 8),
            "text_projection.bias": torch.zeros(8),
        }
    )
    torch.save(
        {
            "args": {"dtype": torch.bfloat16, "lr": 5e-4, "local_bs": 2, "betas": (0.9, 0.95)},
            "epoch": 2,
            "iter": 65369,
            "trainer": {
                "config": {"wei_l1": 0.2, "wei_l2": 1.0},
                "model": wrapper,
                "disc": {"heads.0.weight": torch.zeros(3)},
                "model_optim": {"state": {}, "param_groups": [{"lr": 5e-4, "params": [0, 1]}]},
                "disc_optim": {"state": {}, "param_groups": []},
            },
        },
        training,
    )
    directory = tiny.save_pretrained(root / "saved")
    return {"bare": bare, "training": training, "directory": directory}


@pytest.fixture(scope="session")
def images() -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.rand(2, 3, 64, 64, generator=g) * 2 - 1
