"""The broker port probe judges a port as the broker's own bind would."""

from __future__ import annotations

import socket

import pytest

from evostream.core.stack.ports import HOST, free_port, port_is_free


def _leave_time_wait(port: int) -> None:
    """Accept one connection on ``port`` and close it from the server side first, as a stopping broker does: the
    server's end of it stays in TIME_WAIT on ``port``. The listener sets SO_REUSEADDR as the JVM's server sockets do
    (Linux lets a later bind through TIME_WAIT only when both sockets carry the option)."""
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind((HOST, port))
        server.listen(1)
        client = socket.create_connection((HOST, port))
        conn, _ = server.accept()
        conn.close()  # the side that closes first keeps TIME_WAIT
        client.recv(1)  # reads the FIN
        client.close()


def test_connections_in_time_wait_do_not_hold_the_port() -> None:
    port = free_port()
    _leave_time_wait(port)
    # the situation is real: a bind without SO_REUSEADDR is refused while TIME_WAIT lasts
    with socket.socket() as plain, pytest.raises(OSError, match="in use"):
        plain.bind((HOST, port))
    assert port_is_free(port)


def test_a_listening_socket_holds_the_port() -> None:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # even a listener that allows reuse, as the JVM's
        s.bind((HOST, 0))
        s.listen(1)
        assert not port_is_free(int(s.getsockname()[1]))
