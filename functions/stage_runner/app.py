"""The "Run stage on Lambda" state: run one stage with qlayer.steps.

Thin: parse the event, call qlayer.aws.steps, return. Logic and tests live in the library.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger, Tracer
from aws_lambda_powertools.utilities.typing import LambdaContext

from qlayer.aws.events import StepEvent, parse
from qlayer.aws.services import services
from qlayer.aws.steps import run_stage_step

logger = Logger(service="qlayer-stage_runner")
tracer = Tracer(service="qlayer-stage_runner")


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> Any:
    return run_stage_step(parse(StepEvent, event), services())
