"""Names of the stack's resources: from Lambda environment variables or stack outputs.

In Lambda (and Batch) the stack sets ``QLAYER_BUCKET``, ``QLAYER_JOBS_TABLE``,
``QLAYER_TASKS_TABLE``, and where a function needs them ``QLAYER_STATE_MACHINE_ARN`` and
``QLAYER_DISPATCH_QUEUE_URL``. A client reads the CloudFormation outputs of the
stack (``BucketName``, ``JobsTableName``, ``TasksTableName``, ``StateMachineArn``,
``DispatchQueueUrl``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from qlayer.errors import QlayerError

if TYPE_CHECKING:
    from qlayer.planner import Resources

ENV_VARS = {
    "bucket": "QLAYER_BUCKET",
    "jobs_table": "QLAYER_JOBS_TABLE",
    "tasks_table": "QLAYER_TASKS_TABLE",
    "state_machine_arn": "QLAYER_STATE_MACHINE_ARN",
    "dispatch_queue_url": "QLAYER_DISPATCH_QUEUE_URL",
    "resources": "QLAYER_RESOURCES",
}
STACK_OUTPUTS = {
    "bucket": "BucketName",
    "jobs_table": "JobsTableName",
    "tasks_table": "TasksTableName",
    "state_machine_arn": "StateMachineArn",
    "dispatch_queue_url": "DispatchQueueUrl",
    "resources": "Resources",
}


class ConfigError(QlayerError):
    """The stack's resource names cannot be found."""


@dataclass(frozen=True)
class AwsConfig:
    """Where the stack's resources are. Optional names are None where a function has no use."""

    bucket: str
    jobs_table: str
    tasks_table: str | None = None
    state_machine_arn: str | None = None
    dispatch_queue_url: str | None = None
    resources_json: str | None = None
    region: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> AwsConfig:
        env = os.environ if environ is None else environ
        missing = [
            ENV_VARS[name] for name in ("bucket", "jobs_table") if not env.get(ENV_VARS[name])
        ]
        if missing:
            raise ConfigError(
                f"environment variable(s) {', '.join(missing)} not set; the qlayer stack sets them "
                "on every function it deploys"
            )
        values = {name: env.get(var) or None for name, var in ENV_VARS.items()}
        values["resources_json"] = values.pop("resources")
        return cls(region=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION"), **values)  # type: ignore[arg-type]

    @classmethod
    def from_outputs(cls, outputs: Mapping[str, str], region: str | None = None) -> AwsConfig:
        missing = [
            out
            for name, out in STACK_OUTPUTS.items()
            if name in ("bucket", "jobs_table") and not outputs.get(out)
        ]
        if missing:
            raise ConfigError(
                f"the stack has no output(s) {', '.join(missing)}; is it a qlayer stack?"
            )
        values = {name: outputs.get(out) or None for name, out in STACK_OUTPUTS.items()}
        values["resources_json"] = values.pop("resources")
        return cls(region=region, **values)  # type: ignore[arg-type]

    @classmethod
    def from_stack(cls, stack: str, cloudformation: Any, region: str | None = None) -> AwsConfig:
        """Read the outputs of CloudFormation stack ``stack`` (one DescribeStacks call)."""
        from botocore.exceptions import ClientError

        try:
            found = cloudformation.describe_stacks(StackName=stack)["Stacks"]
        except ClientError as exc:
            raise ConfigError(
                f"cannot read stack {stack!r}: {exc}. Deploy it with 'cdk deploy' from infra/, "
                "or pass stack= the name you deployed"
            ) from exc
        outputs = {o["OutputKey"]: o["OutputValue"] for o in found[0].get("Outputs", [])}
        return cls.from_outputs(outputs, region)

    def resources(self) -> Resources:
        """What the deployment's compute tiers offer (the planner's defaults if the stack
        does not say)."""
        from qlayer.planner import Resources

        return Resources.from_json(self.resources_json) if self.resources_json else Resources()

    def require(self, name: str) -> str:
        value = getattr(self, name)
        if not value:
            raise ConfigError(f"{ENV_VARS.get(name, name)} is not set: this function has no {name}")
        return str(value)
