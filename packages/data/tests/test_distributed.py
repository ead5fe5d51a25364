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


def test_a_world_of_one_gets_a_port_nobody_listens_on():
    """start_deepspeed's MASTER_PORT for a plain run (no launcher): one the OS reports free, so that a port another
    process (or an earlier in-process group) still listens on is never reused; a pid-derived port could be."""
    import socket

    from meditok.data.distributed import _free_local_port

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        ports = {_free_local_port() for _ in range(20)}
        assert taken not in ports
        for port in ports:  # each can be listened on: free, as start_deepspeed needs it
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
                server.bind(("127.0.0.1", port))
                server.listen()
