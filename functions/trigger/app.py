"""An upload to inbox/*.json starts a job (S3 ObjectCreated).

Thin: parse the event, call qlayer.aws.inbox, return. Logic and tests live in the library.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from qlayer.aws.inbox import trigger_from_s3
from qlayer.aws.services import services

logger = Logger(service="qlayer-trigger")
tracer = Tracer(service="qlayer-trigger")
metrics = Metrics(namespace="qlayer", service="qlayer-trigger")


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> Any:
    metrics.add_metric(name="JobsSubmitted", unit=MetricUnit.Count, value=1)
    return trigger_from_s3(event, services())
