"""Operations: the encryption key, the alarm topic, alarms, and the provider secret."""

from __future__ import annotations

from aws_cdk import Duration, RemovalPolicy, SecretValue, Stack
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as cw_actions
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_secretsmanager as secretsmanager
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sqs as sqs
from aws_cdk import aws_stepfunctions as sfn
from constructs import Construct

from qlayer_infra.naming import unique_suffix
from qlayer_infra.patterns import execution_ended

#: What the provider secret holds when the stack creates it: no provider settings yet.
#: The user puts e.g. {"ibm_token": "...", "ibm_instance": "crn:..."} in it after deploy.
EMPTY_PROVIDER_SETTINGS = "{}"


def providers_secret_name(env_name: str) -> str:
    """The default secret name, ``qlayer/<env>/providers-<suffix unique to the stack>``."""
    return f"qlayer/{env_name}/providers-{unique_suffix()}"


class Ops(Construct):
    """A customer-managed KMS key, the SNS alarm topic, and the provider-token secret.

    Call :meth:`add_alarms` once the queue and the state machine exist.

    Attributes:
        key: Encrypts the alarm topic, the dispatch queues, the log groups and the secret.
        topic: Where alarms go; subscribe an email or a chat hook after deploy.
        providers_secret: Provider tokens (IBM Quantum) and settings (Braket): a JSON
            object, created as ``{}``. Named ``secret_name``, by default
            :func:`providers_secret_name` (a retained secret's name must not be reused).
    """

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        env_name: str,
        secret_name: str | None = None,
        removal_policy: RemovalPolicy = RemovalPolicy.RETAIN,
    ) -> None:
        super().__init__(scope, id)
        region = Stack.of(self).region

        self.key = kms.Key(
            self,
            "Key",
            description=f"qlayer {env_name}: alarm topic, dispatch queues, log groups, secret",
            enable_key_rotation=True,
            removal_policy=removal_policy,
        )
        # Services that write encrypted data with this key on the account's behalf.
        self.key.grant_encrypt_decrypt(iam.ServicePrincipal(f"logs.{region}.amazonaws.com"))
        self.key.grant(
            iam.ServicePrincipal("cloudwatch.amazonaws.com"), "kms:Decrypt", "kms:GenerateDataKey*"
        )
        self.key.grant(
            iam.ServicePrincipal("events.amazonaws.com"), "kms:Decrypt", "kms:GenerateDataKey*"
        )

        self.topic = sns.Topic(
            self,
            "Alarms",
            display_name=f"qlayer {env_name} alarms",
            master_key=self.key,
            enforce_ssl=True,
        )

        self.providers_secret = secretsmanager.Secret(
            self,
            "Providers",
            secret_name=secret_name or providers_secret_name(env_name),
            description="qlayer provider settings (JSON): IBM Quantum token/instance, Braket",
            # Not a credential: an empty object for the user to fill in (see docs/deploy.md).
            secret_string_value=SecretValue.unsafe_plain_text(EMPTY_PROVIDER_SETTINGS),
            encryption_key=self.key,
            removal_policy=removal_policy,
        )

    def add_alarms(
        self, *, dlq: sqs.IQueue, state_machine: sfn.IStateMachine
    ) -> list[cloudwatch.Alarm]:
        """Alarm on dead-lettered dispatch messages and on failed executions."""
        action = cw_actions.SnsAction(self.topic)
        dead = cloudwatch.Alarm(
            self,
            "DispatchDeadLetters",
            alarm_description="QPU dispatch messages in the dead-letter queue: submissions failed",
            metric=dlq.metric_approximate_number_of_messages_visible(period=Duration.minutes(1)),
            threshold=0,
            comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
            evaluation_periods=1,
            treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
        )
        failed = cloudwatch.Alarm(
            self,
            "ExecutionsFailed",
            alarm_description="A qlayer job failed; the reason is in jobs/<id>/error.json",
            metric=state_machine.metric_failed(period=Duration.minutes(1)),
            threshold=0,
            comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
            evaluation_periods=1,
            treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
        )
        for alarm in (dead, failed):
            alarm.add_alarm_action(action)
        return [dead, failed]

    def add_job_events(self, *, state_machine: sfn.IStateMachine) -> events.Rule:
        """A topic that hears of every job's end: subscribe to it (email, HTTPS, a queue).

        One message per top-level job (fan-out children, whose ids hold ``_``, are left
        out): ``{"job_id", "execution_status", "state_machine_arn", "at"}``, where the
        execution status SUCCEEDED is DONE, FAILED or TIMED_OUT is ERROR and ABORTED is a
        cancel. EventBridge delivers it at least once and retries for 24 hours.
        """
        self.job_events = sns.Topic(
            self,
            "JobEvents",
            display_name="qlayer job ends",
            master_key=self.key,
            enforce_ssl=True,
        )
        message = events.RuleTargetInput.from_object(
            {
                "job_id": events.EventField.from_path("$.detail.name"),
                "execution_status": events.EventField.from_path("$.detail.status"),
                "state_machine_arn": events.EventField.from_path("$.detail.stateMachineArn"),
                "at": events.EventField.time,
            }
        )
        return events.Rule(
            self,
            "JobEnded",
            description="qlayer: tell the job-events topic that a top-level job ended",
            event_pattern=execution_ended(
                state_machine,
                ["SUCCEEDED", "FAILED", "TIMED_OUT", "ABORTED"],
                name=events.Match.anything_but_wildcard("*_*"),  # top-level jobs only
            ),
            targets=[targets.SnsTopic(self.job_events, message=message)],
        )
