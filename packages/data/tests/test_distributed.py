"""Rank discovery: explicit values, then the launcher's RANK / WORLD_SIZE, else a single process."""

from meditok.data.distributed import launched, rank_and_world_size


def test_single_process_without_a_launcher(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    assert rank_and_world_size() == (0, 1)
    assert not launched()


def test_launcher_variables_and_explicit_values(monkeypatch):
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert rank_and_world_size() == (3, 4)
    assert launched()
    assert rank_and_world_size(1, 2) == (1, 2)
    assert rank_and_world_size(rank=0) == (0, 4)  # only the missing one comes from the environment
