"""Shared by the tests that spawn `torch.distributed` process groups."""
import socket


def free_port() -> int:
    "A TCP port on 127.0.0.1 that nothing listens on now (for a spawned group's `MASTER_PORT`)."
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
