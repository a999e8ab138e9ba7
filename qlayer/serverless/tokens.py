"""A running function's gateway token: derived from the gateway's secret and its job id.

Nothing secret is stored per job. The token of job ``J`` is
``qsj2.J.<HMAC-SHA256(secret, "qlayer-serverless-job:" + J)>``: the stage that starts the
function computes it (it can read the secret, :func:`read_secret`), and the gateway checks
it by computing it again (:func:`job_of`, a constant-time compare). The job's record and
``input.json`` hold only where the secret is (``token_source``, e.g. the path of
``$QLAYER_HOME/token``), never the secret or the token.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from qlayer.errors import QlayerError

__all__ = ["PREFIX", "job_of", "job_token", "read_secret"]

PREFIX = "qsj2."
_LABEL = b"qlayer-serverless-job:"


def job_token(secret: str, job_id: str) -> str:
    """The token of job ``job_id`` under ``secret``."""
    mac = hmac.new(secret.encode(), _LABEL + job_id.encode(), hashlib.sha256).hexdigest()
    return f"{PREFIX}{job_id}.{mac}"


def job_of(secret: str, token: str) -> str | None:
    """The job a token was derived for, if it is a valid job token under ``secret``."""
    if not token.startswith(PREFIX):
        return None
    job_id, dot, _mac = token[len(PREFIX) :].rpartition(".")
    if not dot or not job_id:
        return None
    if hmac.compare_digest(token.encode(), job_token(secret, job_id).encode()):
        return job_id
    return None


def read_secret(source: Mapping[str, Any]) -> str:
    """The gateway's secret from where a job's ``token_source`` says it is.

    Only ``{"file": PATH}`` is known (the local home's ``token``, 0600).

    Raises:
        QlayerError: The source is of an unknown kind, or cannot be read.
    """
    path = source.get("file") if isinstance(source, Mapping) else None
    if not isinstance(path, str) or not path:
        raise QlayerError(f"unknown gateway token source {dict(source or {})!r}")
    try:
        secret = Path(path).read_text().strip()
    except OSError as exc:
        raise QlayerError(f"cannot read the gateway's secret ({path}): {exc}") from exc
    if len(secret) < 16:
        raise QlayerError(f"the gateway's secret in {path} is shorter than 16 characters")
    return secret
