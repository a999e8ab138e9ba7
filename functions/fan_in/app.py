"""The "Fan in" state: hand the children's results, in order, to the next stage.

Thin: parse the event, call qlayer.aws.fanout, return. Logic and tests live in the library.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger, Tracer
from aws_lambda_powertools.utilities.typing import LambdaContext

from qlayer.aws.events import StepEvent, parse
from qlayer.aws.fanout import fan_in_step
from qlayer.aws.services import services

logger = Logger(service="qlayer-fan_in")
tracer = Tracer(service="qlayer-fan_in")


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> Any:
    return fan_in_step(parse(StepEvent, event), services())
