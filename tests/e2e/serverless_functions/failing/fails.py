"""Report a structured error, then fail."""

from qiskit_serverless import get_arguments, send_error

limit = get_arguments().get("limit", 3)
send_error("E_LIMIT", f"limit {limit} is below the minimum of 5", "ValueError", {"limit": [limit]})
raise ValueError(f"limit {limit} is below the minimum of 5")
