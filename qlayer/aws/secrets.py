"""The stack's secrets in Secrets Manager: provider credentials and the gateway's token.

The secret's JSON holds provider settings, e.g.
``{"ibm_token": "...", "ibm_instance": "crn:...", "ibm_channel": "ibm_quantum_platform"}``.
It is read on first use, never at import, and kept for the life of the Lambda process.
The Qiskit Serverless gateway's bearer token (:func:`gateway_token`) is kept a few
minutes, so that a new value reaches warm functions.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

SECRET_ENV = "QLAYER_PROVIDERS_SECRET_ARN"
_LOCK = threading.Lock()
_CACHE: dict[str, dict[str, Any]] = {}


def provider_settings(secret_id: str, client: Any = None) -> dict[str, Any]:
    """The secret's JSON as a dict (cached per process).

    Raises:
        ValueError: The secret is not a JSON object.
    """
    with _LOCK:
        if secret_id not in _CACHE:
            if client is None:
                import boto3

                client = boto3.client("secretsmanager")
            raw = client.get_secret_value(SecretId=secret_id)["SecretString"]
            try:
                value = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise ValueError(f"secret {secret_id} is not JSON: {exc.msg}") from exc
            if not isinstance(value, dict):
                raise ValueError(f"secret {secret_id} must hold a JSON object of provider settings")
            _CACHE[secret_id] = value
        return _CACHE[secret_id]


def ibm_credentials(secret_id: str, client: Any = None) -> Callable[[], dict[str, Any]]:
    """A token provider for :class:`~qlayer.providers.ibm.IbmProvider` reading the secret.

    The secret is read on the provider's first call (never here), once per process. Its
    keys: ``ibm_token``, ``ibm_instance``, ``ibm_channel`` (default
    ``ibm_quantum_platform``) and, for a regional or private endpoint, ``ibm_url``.
    """

    def credentials() -> dict[str, Any]:
        settings = provider_settings(secret_id, client)
        found = {
            "token": settings.get("ibm_token"),
            "instance": settings.get("ibm_instance"),
            "channel": settings.get("ibm_channel") or "ibm_quantum_platform",
        }
        if settings.get("ibm_url"):
            found["url"] = settings["ibm_url"]
        return found

    return credentials


#: How long a process keeps the gateway token before reading the secret again (a put of
#: a new value reaches every warm function within this).
GATEWAY_TOKEN_MAX_AGE_S = 300.0
_TOKENS: dict[str, tuple[float, bytes]] = {}


def gateway_token(
    secret_id: str,
    client: Any = None,
    *,
    max_age_s: float = GATEWAY_TOKEN_MAX_AGE_S,
    clock: Callable[[], float] = time.monotonic,
) -> bytes:
    """The gateway's bearer token (the secret's string, UTF-8), kept for ``max_age_s``.

    Raises:
        ValueError: The secret is empty (nothing could ever match it).
    """
    with _LOCK:
        now = clock()
        kept = _TOKENS.get(secret_id)
        if kept is not None and now - kept[0] < max_age_s:
            return kept[1]
        if client is None:
            import boto3

            client = boto3.client("secretsmanager")
        value = str(client.get_secret_value(SecretId=secret_id).get("SecretString") or "")
        if not value.strip():
            raise ValueError(f"secret {secret_id} holds no gateway token")
        token = value.strip().encode()
        _TOKENS[secret_id] = (now, token)
        return token
