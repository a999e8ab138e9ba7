"""Schedule / Braket events -> finish ended provider jobs, heartbeat the others.

Thin: parse the event, call qlayer.aws.poller, return. Logic and tests live in the library.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from qlayer.aws.poller import poller
from qlayer.aws.services import services

logger = Logger(service="qlayer-poller")
tracer = Tracer(service="qlayer-poller")
metrics = Metrics(namespace="qlayer", service="qlayer-poller")


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> Any:
    metrics.add_metric(name="PollRuns", unit=MetricUnit.Count, value=1)
    return poller(event, services())
