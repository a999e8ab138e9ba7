"""The one error the gateway's routes raise: an HTTP status and a message for the caller."""

from __future__ import annotations


class GatewayError(Exception):
    """A request the gateway answers with a 4xx (or 5xx) and ``{"message": ...}``.

    Args:
        status: The HTTP status (400 bad input, 401/403 token, 404 missing, 409 state, 413
            too large).
        message: What was wrong, and how to fix it.
    """

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

    def body(self) -> dict[str, str]:
        return {"message": self.message}
