"""The memory sender's connect: a fresh SYN each second, no spin on a refusal."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

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


@contextlib.contextmanager
def _receiver(nbytes: int, channels: int) -> Iterator[tuple[int, subprocess.Popen[str]]]:
    """A memory receiver on loopback, ready; yields its port and process."""
    port = _closed_port()
    recv = subprocess.Popen(
        [sys.executable, "-m", "services.migrator.memcopy", "recv", "--listen",
         f"127.0.0.1:{port}", "--bytes", str(nbytes), "--channels", str(channels)],
        stdout=subprocess.PIPE, text=True)
    assert recv.stdout is not None
    try:
        assert recv.stdout.readline().strip() == "ready"
        yield port, recv
    finally:
        recv.kill()
        recv.wait()
        recv.stdout.close()


@pytest.mark.parametrize("channels", [1, 3])
def test_the_bytes_arrive_whole_over_any_number_of_channels(channels: int) -> None:
    nbytes = 5 * memcopy.CHUNK + 12345  # not a multiple of the channels or the chunk
    with _receiver(nbytes, channels) as (port, recv):
        assert memcopy._send(f"127.0.0.1:{port}", nbytes, channels) == 0
        assert recv.stdout is not None
        assert recv.stdout.readline().strip() == f"received {nbytes}"
        assert recv.wait(10) == 0


def test_a_receiver_short_of_its_bytes_fails() -> None:
    with _receiver(1000, 2) as (port, recv):
        for _ in range(2):
            with socket.create_connection(("127.0.0.1", port)) as c:
                c.sendall(b"x" * 100)
        assert recv.stdout is not None
        assert recv.stdout.readline().strip() == "received 200"
        assert recv.wait(10) == 1
