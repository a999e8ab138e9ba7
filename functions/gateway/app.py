"""API Gateway (REST, Lambda proxy) -> the Qiskit Serverless gateway routes.

Thin: the Powertools resolver and its routes live in qlayer.aws.gateway (the token check,
the request bounds, the shared gateway core over the stack's stores); this resolves one event.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger, Tracer
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.utilities.typing import LambdaContext

from qlayer.aws.gateway import app

logger = Logger(service="qlayer-gateway")
tracer = Tracer(service="qlayer-gateway")


@logger.inject_lambda_context(
    correlation_id_path=correlation_paths.API_GATEWAY_REST, clear_state=True
)
@tracer.capture_lambda_handler(capture_response=False)  # answers hold user data and files
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return app.resolve(event, context)
