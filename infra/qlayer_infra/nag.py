"""cdk-nag (AwsSolutions) findings this stack accepts, each with its reason.

cdk-nag 3 runs as a CDK policy-validation plugin (``attach(app)``) and findings
are acknowledged with ``Validations.of(construct).acknowledge(...)``, one finding
id at a time (``AwsSolutions-IAM5[Resource::...]``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aws_cdk import Acknowledgment, App, Validations
from constructs import IConstruct

if TYPE_CHECKING:
    from qlayer_infra.compute import Compute
    from qlayer_infra.dispatch import Dispatch
    from qlayer_infra.storage import Storage
    from qlayer_infra.workflow import JobWorkflow


def attach(app: App) -> None:
    """Run the AwsSolutions pack at synthesis; an unacknowledged finding stops it."""
    from cdk_nag import AwsSolutionsChecks

    Validations.of(app).add_plugins(AwsSolutionsChecks(app))


def ack(scope: IConstruct, reason: str, *ids: str) -> None:
    """Acknowledge findings ``ids`` on ``scope`` and everything under it."""
    Validations.of(scope).acknowledge(*(Acknowledgment(id=i, reason=reason) for i in ids))


def acknowledge(
    stack: IConstruct, *, storage: Storage, compute: Compute, workflow: JobWorkflow, dispatch: Dispatch
) -> None:
    """The accepted findings of QlayerStack."""
