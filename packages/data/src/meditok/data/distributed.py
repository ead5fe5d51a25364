"""Where this process stands in a distributed job, and the one DeepSpeed start-up of the MedITok trainers.

`rank_and_world_size` is the rank discovery every package uses (datasets splitting shards, pre-tokenisation
splitting chunks, the trainers): explicit values win, then an initialised ``torch.distributed`` group, then the
``RANK`` / ``WORLD_SIZE`` variables a launcher (``deepspeed``, ``torchrun``) sets, else a single process."""

from __future__ import annotations

import os

import torch


def rank_and_world_size(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """(rank, world size) of this process."""
    if rank is not None and world_size is not None:
        return rank, world_size
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        found = torch.distributed.get_rank(), torch.distributed.get_world_size()
    else:
        found = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    return (found[0] if rank is None else rank), (found[1] if world_size is None else world_size)


def launched() -> bool:
    """True under a multi-process launcher (``deepspeed``, ``torchrun``): it sets LOCAL_RANK and WORLD_SIZE."""
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def _free_local_port() -> int:
    """A port the OS reports free on 127.0.0.1 (a pid-derived port could be one another process already listens on)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_deepspeed() -> tuple[int, int, torch.device]:
    """Initialise DeepSpeed's process group (NCCL on GPUs, gloo on the CPU); returns (rank, world size, device).

    A plain ``python`` run becomes a world of one (without this DeepSpeed would want mpi4py to find its peers)."""
    defaults = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1"}
    for key, value in defaults.items():
        os.environ.setdefault(key, value)
    if "MASTER_PORT" not in os.environ:  # a world of one: no peer has to agree on it, so any free port will do
        os.environ["MASTER_PORT"] = str(_free_local_port())
    cuda = torch.cuda.is_available()
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if cuda else "cpu")
    import deepspeed
    import deepspeed.ops

    # The CPU shm all-reduce op only speeds up inference and costs a ~70 s JIT build; gloo does the work without it.
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo")
    device = torch.device("cuda", int(os.environ["LOCAL_RANK"])) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    rank, world = rank_and_world_size()
    return rank, world, device
