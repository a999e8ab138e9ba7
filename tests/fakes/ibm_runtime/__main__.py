"""``python -m tests.fakes.ibm_runtime --dir D [--port P] [--backend NAME ...]``.

Serves the fake IBM Quantum service on 127.0.0.1 with its state in ``D`` and writes
``D/server.json`` (``{"url": ..., "pid": ...}``) once it listens; ``--port 0`` (the
default) takes a free port.
"""

from __future__ import annotations

import argparse

from . import serve
from .devices import DEFAULT_BACKENDS


def main(argv: list[str] | None = None) -> None:
    """Parse the arguments and serve until interrupted."""
    parser = argparse.ArgumentParser(prog="python -m tests.fakes.ibm_runtime")
    parser.add_argument("--dir", required=True, help="directory holding the service's state")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: any free)")
    parser.add_argument(
        "--backend",
        action="append",
        dest="backends",
        help=f"a device to serve (repeatable; default: {', '.join(DEFAULT_BACKENDS)})",
    )
    args = parser.parse_args(argv)
    serve(args.dir, port=args.port, backends=args.backends or DEFAULT_BACKENDS)


if __name__ == "__main__":
    main()
