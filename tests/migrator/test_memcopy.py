"""The memory sender's connect: a fresh SYN each second, no spin on a refusal."""

from __future__ import annotations

import socket
import time

import pytest

from services.migrator import memcopy


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_refused_connect_is_retried_once_a_second_until_the_deadline(
        monkeypatch: pytest.MonkeyPatch) -> None:
    attempts: list[float] = []
    real = socket.create_connection

    def counting(*args: object, **kw: object) -> socket.socket:
        attempts.append(time.monotonic())
        return real(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(memcopy.socket, "create_connection", counting)
    start = time.monotonic()
    with pytest.raises(ConnectionRefusedError):
        memcopy._connect("127.0.0.1", _closed_port(), 2.5)
    assert time.monotonic() - start >= 2.5
    assert 3 <= len(attempts) <= 4, attempts  # about one a second, not a spin


def test_connect_returns_a_blocking_socket_with_a_send_timeout() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        with memcopy._connect("127.0.0.1", port, 5.0) as conn:
            assert conn.gettimeout() == 30.0
