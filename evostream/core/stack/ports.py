"""Loopback port checks for the local broker."""

from __future__ import annotations

import socket

HOST = "127.0.0.1"


def port_is_free(port: int, host: str = HOST) -> bool:
    """True when the broker could listen on ``host:port`` now.

    The probe binds the way the broker does: the JVM's server sockets set SO_REUSEADDR, so the connections a stopped
    broker leaves in TIME_WAIT (for up to a minute) do not hold its port, while any socket listening there does.
    Without the option, ``stack down`` then ``stack up`` within that minute was refused as "in use"."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
            s.listen(1)
        except OSError:
            return False
    return True


def free_port(host: str = HOST, avoid: frozenset[int] = frozenset()) -> int:
    """A port the kernel says is free now, not in ``avoid``."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            port = int(s.getsockname()[1])
        if port not in avoid:
            return port
