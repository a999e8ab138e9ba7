"""Run the dashboard: bind a socket (loopback by default), print its URL, serve until ^C."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable

from qlayer.client import QlayerClient
from qlayer.errors import QlayerError

LOOPBACK = "127.0.0.1"


def is_loopback(host: str) -> bool:
    """True for an address only this machine can reach (``127.0.0.0/8``, ``::1``, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (port 0: any free port).

    Raises:
        QlayerError: The address cannot be bound (in use, or not this machine's).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise QlayerError(f"cannot serve on {host}:{port}: {exc.strerror or exc}") from exc
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def url(host: str, port: int, token: str) -> str:
    """The address to open: it carries the token once, then a cookie does."""
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/?token={token}"


def serve(
    client: QlayerClient,
    *,
    token: str,
    host: str = LOOPBACK,
    port: int = 8765,
    target: str = "local",
    refresh_s: float = 0.5,
    announce: Callable[[str], None] | None = None,
) -> None:
    """Serve the dashboard over ``client`` until interrupted.

    Args:
        client: Any substrate's client.
        token: The secret the printed URL carries (``Home.token()``).
        host: The address to bind (loopback unless asked otherwise).
        port: The port (0: any free one; the printed URL says which).
        target: The substrate's name, shown on the pages.
        refresh_s: Seconds between a live job stream's reads.
        announce: Where the URL (and a warning off loopback) is written (stdout).
    """
    import uvicorn

    say = announce or (lambda line: print(line, flush=True))

    from qlayer.ui.app import create_app

    sock = bind(host, port)
    chosen = sock.getsockname()[1]
    if not is_loopback(host):
        say(
            f"warning: serving on {host}, reachable beyond this machine, over plain HTTP; "
            "anyone who sees the URL's token can cancel jobs"
        )
    say(f"qlayer dashboard: {url(host, chosen, token)}")
    app = create_app(client, token=token, refresh_s=refresh_s, target=target)
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    server = uvicorn.Server(config)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
