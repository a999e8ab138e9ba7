"""A guard that refuses, and records, any connection or lookup off 127.0.0.1.

Libraries swallow some network errors (qiskit-ibm-runtime falls back to API-key
auth when the IAM call fails), so refusing is not enough: every refused attempt is
recorded, and the caller fails on the record afterwards.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

LOOPBACK = "127.0.0.1"


@contextmanager
def loopback_only() -> Iterator[list[str]]:
    """While open, sockets may only connect to, and names only resolve as, 127.0.0.1.

    Yields the list of refused attempts (empty when the code under test behaved).
    """
    refused: list[str] = []
    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex
    real_getaddrinfo = socket.getaddrinfo

    def check(sock: socket.socket, address: Any) -> None:
        if sock.family != socket.AF_INET or address[0] != LOOPBACK:
            refused.append(f"connect {address!r}")
            raise ConnectionRefusedError(f"loopback guard: refused connection to {address!r}")

    def connect(self: socket.socket, address: Any) -> None:
        check(self, address)
        real_connect(self, address)

    def connect_ex(self: socket.socket, address: Any) -> int:
        check(self, address)
        return real_connect_ex(self, address)

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else host
        if name != LOOPBACK:
            refused.append(f"resolve {name!r}")
            raise socket.gaierror(socket.EAI_NONAME, f"loopback guard: refused lookup of {name!r}")
        return real_getaddrinfo(host, *args, **kwargs)

    socket.socket.connect = connect  # type: ignore[method-assign]
    socket.socket.connect_ex = connect_ex  # type: ignore[method-assign]
    socket.getaddrinfo = getaddrinfo
    try:
        yield refused
    finally:
        socket.socket.connect = real_connect  # type: ignore[method-assign]
        socket.socket.connect_ex = real_connect_ex  # type: ignore[method-assign]
        socket.getaddrinfo = real_getaddrinfo
