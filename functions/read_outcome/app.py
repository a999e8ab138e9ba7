"""The "Read stage outcome" state: the decision a Batch container wrote.

Thin: parse the event, call qlayer.aws.steps, return. Logic and tests live in the library.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger, Tracer
from aws_lambda_powertools.utilities.typing import LambdaContext

from qlayer.aws.events import StepEvent, parse
from qlayer.aws.services import services
from qlayer.aws.steps import read_outcome

logger = Logger(service="qlayer-read_outcome")
tracer = Tracer(service="qlayer-read_outcome")


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> Any:
    return read_outcome(parse(StepEvent, event), services())
