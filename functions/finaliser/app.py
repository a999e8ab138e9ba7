"""The "Finalise" state: mark the job DONE.

Thin: parse the event, call qlayer.aws.steps, return. Logic and tests live in the library.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from qlayer.aws.events import StepEvent, parse
from qlayer.aws.services import services
from qlayer.aws.steps import finalise

logger = Logger(service="qlayer-finaliser")
tracer = Tracer(service="qlayer-finaliser")
metrics = Metrics(namespace="qlayer", service="qlayer-finaliser")


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> Any:
    metrics.add_metric(name="JobsDone", unit=MetricUnit.Count, value=1)
    return finalise(parse(StepEvent, event), services())
