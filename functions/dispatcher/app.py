"""SQS dispatch queue -> submit each execute request to its provider once (partial batch failures).

Thin: parse the event, call qlayer.aws.dispatcher, return. Logic and tests live in the library.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from qlayer.aws.dispatcher import dispatcher
from qlayer.aws.services import services

logger = Logger(service="qlayer-dispatcher")
tracer = Tracer(service="qlayer-dispatcher")
metrics = Metrics(namespace="qlayer", service="qlayer-dispatcher")


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> Any:
    metrics.add_metric(name="ExecuteMessages", unit=MetricUnit.Count, value=1)
    return dispatcher(event, services())
