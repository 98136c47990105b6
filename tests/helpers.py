"""Shared by several tests: a free port for spawned `torch.distributed` groups, the fenced code blocks of a Markdown text."""
import re
import socket


def free_port() -> int:
    "A TCP port on 127.0.0.1 that nothing listens on now (for a spawned group's `MASTER_PORT`)."
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fenced_blocks(md: str, lang: str) -> list[str]:
    "The bodies of the ```lang fenced blocks of Markdown text `md`, stripped."
    return [b.strip() for b in re.findall(rf"^```{lang}\n(.*?)^```", md, re.M | re.S)]
