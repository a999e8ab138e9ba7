"""The "Simulate on Lambda" state: run an execute request on Aer.

Thin: parse the event, call qlayer.aws.steps, return. Logic and tests live in the library.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger, Tracer
from aws_lambda_powertools.utilities.typing import LambdaContext

from qlayer.aws.events import StepEvent, parse
from qlayer.aws.services import services
from qlayer.aws.steps import simulate

logger = Logger(service="qlayer-simulator")
tracer = Tracer(service="qlayer-simulator")


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> Any:
    return simulate(parse(StepEvent, event), services())
