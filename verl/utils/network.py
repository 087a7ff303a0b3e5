"""Network helpers shared by the workers and the controller."""

from __future__ import annotations

import socket


def find_free_port() -> int:
    """A TCP port free on this host now (the OS picks it; another process may take it later, so
    bind it soon: the workers use it for torch.distributed's rendezvous)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]
