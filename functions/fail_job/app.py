"""The "Fail job" state, and executions that ended FAILED/TIMED_OUT/ABORTED (EventBridge).

Thin: parse the event, call qlayer.aws.failures, return. Logic and tests live in the library.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from qlayer.aws.failures import fail_job
from qlayer.aws.services import services

logger = Logger(service="qlayer-fail_job")
tracer = Tracer(service="qlayer-fail_job")
metrics = Metrics(namespace="qlayer", service="qlayer-fail_job")


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> Any:
    metrics.add_metric(name="JobsFailed", unit=MetricUnit.Count, value=1)
    return fail_job(event, services())
