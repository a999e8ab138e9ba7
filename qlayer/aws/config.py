"""Names of the stack's resources: from Lambda environment variables or stack outputs.

Each function (and each Batch container) gets exactly the variables of its row in
:data:`FUNCTION_ENV`; the CDK app builds every environment from that table and a test
holds the synthesized template to it. A client reads the CloudFormation outputs of the
stack (:data:`STACK_OUTPUTS`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from qlayer.errors import ConfigError

if TYPE_CHECKING:
    from qlayer.planner import Resources

__all__ = ["AwsConfig", "ConfigError"]

BUCKET_ENV = "QLAYER_BUCKET"
JOBS_TABLE_ENV = "QLAYER_JOBS_TABLE"
TASKS_TABLE_ENV = "QLAYER_TASKS_TABLE"
STATE_MACHINE_ARN_ENV = "QLAYER_STATE_MACHINE_ARN"
DISPATCH_QUEUE_URL_ENV = "QLAYER_DISPATCH_QUEUE_URL"
PROVIDERS_SECRET_ARN_ENV = "QLAYER_PROVIDERS_SECRET_ARN"
BRAKET_BUCKET_ENV = "QLAYER_BRAKET_BUCKET"
#: The Secrets Manager secret holding the Qiskit Serverless gateway's bearer token (the
#: gateway function reads it; the token itself is never in an environment).
GATEWAY_TOKEN_SECRET_ARN_ENV = "QLAYER_GATEWAY_TOKEN_SECRET_ARN"
#: JSON of :class:`qlayer.planner.Resources`: what one stage or simulation can get here.
RESOURCES_ENV = "QLAYER_RESOURCES"
#: Provider plugins, ``prefix=module:factory[,...]`` (see qlayer.providers.registry).
PROVIDERS_ENV = "QLAYER_PROVIDERS"
#: JSON ``{backend or prefix: {limit: number}}``: dispatch rate limits of the deployment.
RATE_LIMITS_ENV = "QLAYER_RATE_LIMITS"
#: The handler's name (``"batch"`` in the Batch containers).
FUNCTION_NAME_ENV = "QLAYER_FUNCTION"
LOG_SERVICE_ENV = "POWERTOOLS_SERVICE_NAME"
LOG_LEVEL_ENV = "POWERTOOLS_LOG_LEVEL"

#: Set only when the deployment configures them (stack props ``provider_plugins``,
#: ``rate_limits``); every other name in a row is always set.
OPTIONAL_ENV: frozenset[str] = frozenset({PROVIDERS_ENV, RATE_LIMITS_ENV})

_EVERY = frozenset({BUCKET_ENV, JOBS_TABLE_ENV, FUNCTION_NAME_ENV, LOG_SERVICE_ENV, LOG_LEVEL_ENV})
_PROVIDER_CONFIG = OPTIONAL_ENV
_RUNS_STAGES = frozenset({PROVIDERS_SECRET_ARN_ENV, RESOURCES_ENV}) | _PROVIDER_CONFIG
_TALKS_TO_PROVIDERS = (
    frozenset({TASKS_TABLE_ENV, PROVIDERS_SECRET_ARN_ENV, BRAKET_BUCKET_ENV}) | _PROVIDER_CONFIG
)

#: Handler name -> the environment variables its code reads; ``"batch"`` is the Batch
#: containers (``python -m qlayer.aws.batch_entry``, stages and simulations),
#: ``"env_build"`` the environment builds (``python -m qlayer.aws.env_build``).
FUNCTION_ENV: dict[str, frozenset[str]] = {
    "trigger": _EVERY | {STATE_MACHINE_ARN_ENV},
    "loader": _EVERY,
    "read_outcome": _EVERY,
    "start_children": _EVERY,
    "fan_in": _EVERY,
    # finaliser asks the dispatcher to close a finished job's QPU session.
    "finaliser": _EVERY | {DISPATCH_QUEUE_URL_ENV},
    # fail_job sends provider-cancel messages to the dispatcher.
    "fail_job": _EVERY | {DISPATCH_QUEUE_URL_ENV},
    "stage_runner": _EVERY | _RUNS_STAGES,
    "simulator": _EVERY | {RESOURCES_ENV} | _PROVIDER_CONFIG,
    "dispatcher": _EVERY | _TALKS_TO_PROVIDERS,
    "poller": _EVERY | _TALKS_TO_PROVIDERS,
    "batch": _EVERY | _RUNS_STAGES,
    # the environment build (qlayer.aws.env_build) touches envs/* of the bucket only
    "env_build": frozenset({BUCKET_ENV, FUNCTION_NAME_ENV, LOG_SERVICE_ENV, LOG_LEVEL_ENV}),
    # The Qiskit Serverless gateway behind API Gateway: starts jobs (and checks what a
    # stage may declare), cancels them (provider cancels go to the dispatcher), and
    # checks the bearer token against its secret.
    "gateway": _EVERY
    | {STATE_MACHINE_ARN_ENV, DISPATCH_QUEUE_URL_ENV, RESOURCES_ENV, GATEWAY_TOKEN_SECRET_ARN_ENV},
}

ENV_VARS = {
    "bucket": BUCKET_ENV,
    "jobs_table": JOBS_TABLE_ENV,
    "tasks_table": TASKS_TABLE_ENV,
    "state_machine_arn": STATE_MACHINE_ARN_ENV,
    "dispatch_queue_url": DISPATCH_QUEUE_URL_ENV,
    "providers_secret_arn": PROVIDERS_SECRET_ARN_ENV,
    "braket_bucket": BRAKET_BUCKET_ENV,
    "resources_json": RESOURCES_ENV,
    "gateway_token_secret_arn": GATEWAY_TOKEN_SECRET_ARN_ENV,
}
STACK_OUTPUTS = {
    "bucket": "BucketName",
    "jobs_table": "JobsTableName",
    "tasks_table": "TasksTableName",
    "state_machine_arn": "StateMachineArn",
    "dispatch_queue_url": "DispatchQueueUrl",
    "providers_secret_arn": "ProvidersSecretArn",
    "braket_bucket": "BraketResultsBucketName",
    "resources_json": "Resources",
    "gateway_token_secret_arn": "GatewayTokenSecretArn",
}


@dataclass(frozen=True)
class AwsConfig:
    """Where the stack's resources are. Optional names are None where a function has no use."""

    bucket: str
    jobs_table: str
    tasks_table: str | None = None
    state_machine_arn: str | None = None
    dispatch_queue_url: str | None = None
    providers_secret_arn: str | None = None
    braket_bucket: str | None = None
    resources_json: str | None = None
    gateway_token_secret_arn: str | None = None
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
        """What the deployment's compute tiers offer (``QLAYER_RESOURCES`` in a function,
        the output ``Resources`` for a client; the defaults if the stack does not say).

        Raises:
            ConfigError: The JSON is malformed.
        """
        from qlayer.planner import Resources

        return Resources.from_json(self.resources_json) if self.resources_json else Resources()

    def require(self, name: str) -> str:
        value = getattr(self, name)
        if not value:
            raise ConfigError(f"{ENV_VARS.get(name, name)} is not set: this function has no {name}")
        return str(value)
