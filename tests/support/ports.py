"""TCP ports on 127.0.0.1: a free one to listen on, and whether one refuses connections."""

from __future__ import annotations

import socket

from scripts.devservices import free_port

__all__ = ["free_port", "refused"]


def refused(port: int) -> bool:
    """True if nothing accepts connections on 127.0.0.1:port."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False
