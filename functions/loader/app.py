"""The "Load job" state: mark the job RUNNING, return its first decision.

Thin: parse the event, call qlayer.aws.steps, return. Logic and tests live in the library.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger, Tracer
from aws_lambda_powertools.utilities.typing import LambdaContext

from qlayer.aws.events import LoadEvent, parse
from qlayer.aws.services import services
from qlayer.aws.steps import load_job

logger = Logger(service="qlayer-loader")
tracer = Tracer(service="qlayer-loader")


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> Any:
    return load_job(parse(LoadEvent, event), services())
