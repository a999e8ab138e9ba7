"""``qlayer serve``: the Qiskit Serverless gateway over this home, on 127.0.0.1:8000.

The gateway must be up while functions run: their in-job calls (``update_status``,
``send_error``, runtime-job registration) go to it, as they go to the gateway on Qiskit
Serverless. Jobs themselves run in the daemon and survive a stopped server; only those
calls are lost meanwhile (the library logs a warning and the function goes on).
"""

from __future__ import annotations

from collections.abc import Callable

from qlayer.errors import QlayerError
from qlayer.serverless import overlay
from qlayer.serverless.gateway import Gateway
from qlayer.ui.serve import LOOPBACK, bind, is_loopback

DEFAULT_PORT = 8000


def local_gateway(home: str | None, public_url: str) -> Gateway:
    """The gateway over the local home ``home`` (its token, its daemon, its store)."""
    from qlayer.local.client import LocalClient

    client = LocalClient(home)
    folder = overlay.ensure(overlay.default_folder(client.home.root))
    return Gateway(
        client,
        client.jobstore,
        client.store,
        secret=client.home.token(),
        public_url=public_url,
        overlay=str(folder),
        token_source={"file": str(client.home.token_file)},
    )


def serve(
    home: str | None,
    *,
    host: str = LOOPBACK,
    port: int = DEFAULT_PORT,
    announce: Callable[[str], None] | None = None,
) -> None:
    """Serve the gateway until interrupted.

    Raises:
        QlayerError: The address cannot be bound, or the library could not be installed.
    """
    import uvicorn

    from qlayer.serverless.app import create_app

    say = announce or (lambda line: print(line, flush=True))
    sock = bind(host, port)
    chosen = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    inside = LOOPBACK if host in ("0.0.0.0", "::") else host
    try:
        gateway = local_gateway(
            home, f"http://{'[' + inside + ']' if ':' in inside else inside}:{chosen}"
        )
    except QlayerError:
        sock.close()
        raise
    if not is_loopback(host):
        say(
            f"warning: serving on {host}, reachable beyond this machine, over plain HTTP; "
            "anyone who sees the token can run and cancel functions"
        )
    say(f"qlayer serverless gateway: http://{shown}:{chosen}")
    say(f"token: {gateway.secret}")
    say(
        "from qiskit_serverless import ServerlessClient\n"
        f'client = ServerlessClient(host="http://{shown}:{chosen}", token="<token>", '
        'channel="local")'
    )
    config = uvicorn.Config(
        create_app(gateway), log_level="warning", access_log=False, lifespan="off"
    )
    server = uvicorn.Server(config)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
