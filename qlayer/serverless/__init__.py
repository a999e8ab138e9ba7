"""Qiskit Serverless on qlayer: its functions run as qlayer jobs, its client talks to us.

* :mod:`qlayer.serverless.gateway` — the gateway's routes as plain functions over qlayer's
  ports (no web framework): programs, jobs, files and the calls a running function makes.
  The local server (:mod:`qlayer.serverless.app`, ``qlayer serve``) and an AWS Lambda
  resolver call the same functions.
* :mod:`qlayer.serverless.functions` — an uploaded function (its record, its artifact
  checked and turned into a qlayer program).
* :mod:`qlayer.serverless.job` — the program side: the one stage that runs a function's
  entrypoint with the environment ``qiskit_serverless`` reads inside a job.
* :mod:`qlayer.serverless.overlay` — the ``qiskit_serverless`` library for the job's
  process, installed once beside qlayer's own packages.

See ``docs/coming-from-qiskit-serverless.md``.
"""

from __future__ import annotations

from qlayer.serverless.errors import GatewayError

__all__ = ["GatewayError"]
