"""AWS itself, for the cloud in a box: moto's server in this process, on 127.0.0.1.

:class:`MotoServer` starts ``moto.server.ThreadedMotoServer`` on a free loopback port
and switches on, through moto's own ``/moto-api/config`` endpoint, what the box needs:

* ``stepfunctions.execute_state_machine``: executions really run the definition (moto's
  ASL interpreter, one thread per execution) instead of staying RUNNING forever;
* ``lambda.use_docker: False`` and ``batch.use_docker: False``: no Docker; the box's
  patches (:mod:`qlayer.cloudbox.patches`) hand invocations to the Lambda runtimes and
  submitted jobs to the Batch runner (:mod:`qlayer.cloudbox.runtimes`,
  :mod:`qlayer.cloudbox.batch`).

Every client talks HTTP to it: :meth:`MotoServer.client_env` is what a process needs
(``AWS_ENDPOINT_URL`` and dummy credentials). moto's Step Functions interpreter calls
the other services through ``http://localhost:$MOTO_PORT``, so ``MOTO_PORT`` is set in
this process while the server runs.
"""

from __future__ import annotations

import json
import os
import threading
import urllib.request
from typing import Any

#: The region and account every box lives in (moto's default account).
REGION = "us-east-1"
ACCOUNT = "123456789012"
#: Dummy credentials: moto accepts any, and maps unknown keys to ACCOUNT.
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "cloudbox",
    "AWS_SECRET_ACCESS_KEY": "cloudbox",
    "AWS_SESSION_TOKEN": "cloudbox",
}
#: What the box turns on in moto (POST /moto-api/config).
MOTO_CONFIG: dict[str, Any] = {
    "stepfunctions": {"execute_state_machine": True},
    "lambda": {"use_docker": False},
    "batch": {"use_docker": False},
}


class MotoServer:
    """moto's threaded server bound to ``host`` (loopback only) on a free port.

    Args:
        host: The address to bind; only loopback addresses are accepted.
        port: 0 (default) for a free port.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        if not host.startswith("127."):
            raise ValueError(f"the cloud box binds loopback addresses only, not {host!r}")
        self.host = host
        self.port = port
        self._server: Any = None
        self._saved_port: str | None = None
        self._clients: dict[str, Any] = {}
        self._clients_lock = threading.Lock()

    @property
    def endpoint(self) -> str:
        """``http://127.0.0.1:<port>``: the one endpoint of every AWS service here."""
        return f"http://{self.host}:{self.port}"

    def start(self) -> MotoServer:
        import logging

        try:
            from moto.server import ThreadedMotoServer
        except ImportError as exc:
            raise RuntimeError(
                f"the cloud box needs moto's server: pip install 'qlayer[cloudbox]' ({exc})"
            ) from exc

        # werkzeug logs every request at INFO (thousands per job), and moto's interpreter
        # logs every Fail state (a failed job) as an ERROR with its parse tree: quiet both.
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        logging.getLogger("moto.stepfunctions.parser").setLevel(logging.CRITICAL)

        self._server = ThreadedMotoServer(ip_address=self.host, port=self.port, verbose=False)
        self._server.start()
        self.port = int(self._server.get_host_and_port()[1])
        self._saved_port = os.environ.get("MOTO_PORT")
        os.environ["MOTO_PORT"] = str(self.port)
        self.post("/moto-api/reset", None)
        self.post("/moto-api/config", MOTO_CONFIG)
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        try:
            self.post("/moto-api/reset", None)
        finally:
            self._server.stop()
            self._server = None
            with self._clients_lock:
                self._clients.clear()
            if self._saved_port is None:
                os.environ.pop("MOTO_PORT", None)
            else:
                os.environ["MOTO_PORT"] = self._saved_port

    def config(self) -> dict[str, Any]:
        """moto's current configuration, as its ``/moto-api/config`` reports it."""
        with urllib.request.urlopen(self.endpoint + "/moto-api/config", timeout=10) as reply:
            return json.loads(reply.read())  # type: ignore[no-any-return]

    def post(self, path: str, body: Any) -> bytes:
        data = json.dumps(body).encode() if body is not None else b""
        request = urllib.request.Request(self.endpoint + path, data=data, method="POST")
        request.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(request, timeout=30) as reply:
            return reply.read()  # type: ignore[no-any-return]

    def client_env(self) -> dict[str, str]:
        """The variables that point boto3 at this server, with dummy credentials."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_REGION": REGION,
            "AWS_DEFAULT_REGION": REGION,
            **CREDENTIALS,
        }

    def session(self) -> Any:
        """A boto3 session with the dummy credentials (clients still need AWS_ENDPOINT_URL,
        or ``endpoint_url=``: see :func:`client`)."""
        import boto3

        return boto3.Session(
            aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            aws_session_token=CREDENTIALS["AWS_SESSION_TOKEN"],
            region_name=REGION,
        )

    def client(self, service: str) -> Any:
        """A boto3 client of ``service`` on this server, made once and shared.

        boto3's low-level clients are thread-safe (its sessions are not); making one costs
        tens of milliseconds of CPU (a session, the service model's JSON), which the box's
        pumps would otherwise pay on every tick, in the process that also runs moto.
        """
        with self._clients_lock:
            found = self._clients.get(service)
            if found is None:
                found = self.session().client(service, endpoint_url=self.endpoint)
                self._clients[service] = found
            return found

    def __enter__(self) -> MotoServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
