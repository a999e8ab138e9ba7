"""The road to a QPU: the dispatch queue, the dispatcher, the poller and Braket events.

The state machine's "Wait for QPU" state sends one message per execute request
to the dispatch queue, with its task token. The dispatcher submits the provider
job (idempotently: a redelivered message finds its ``qpu_tasks`` item and does
not submit again). The poller (every minute) and Braket's task-state events
finish the task with SendTaskSuccess/SendTaskFailure and keep it alive with
SendTaskHeartbeat.
"""

from __future__ import annotations

from aws_cdk import Duration
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_lambda_event_sources as event_sources
from aws_cdk import aws_sqs as sqs
from constructs import Construct

#: SQS redelivers a message this many times before it goes to the dead-letter queue.
MAX_RECEIVE_COUNT = 5
#: The queue's visibility timeout is at least this many times the dispatcher's timeout
#: (AWS guidance for Lambda event sources, so retries of a batch do not overlap).
VISIBILITY_FACTOR = 6


class Dispatch(Construct):
    """SQS dispatch queue + DLQ feeding the dispatcher; poller schedule; Braket rule.

    The queues exist before the functions (their URL is part of the functions'
    environment); :meth:`connect` then wires the dispatcher and the poller.

    Attributes:
        queue: Messages ``{"task_token", "job_id", "seq", "request_key", "backend"}``.
        dlq: Messages that failed MAX_RECEIVE_COUNT times.
        poll_rule: rate(1 minute) -> poller.
        braket_rule: Braket task state changes -> poller.
    """

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        dispatcher_timeout: Duration,
        key: kms.IKey,
    ) -> None:
        super().__init__(scope, id)
        self._dispatcher_timeout_s = dispatcher_timeout.to_seconds()
        self.dlq = sqs.Queue(
            self,
            "DeadLetters",
            encryption=sqs.QueueEncryption.KMS,
            encryption_master_key=key,
            enforce_ssl=True,
            retention_period=Duration.days(14),
        )
        self.queue = sqs.Queue(
            self,
            "Queue",
            encryption=sqs.QueueEncryption.KMS,
            encryption_master_key=key,
            enforce_ssl=True,
            visibility_timeout=Duration.seconds(
                dispatcher_timeout.to_seconds() * VISIBILITY_FACTOR
            ),
            retention_period=Duration.days(4),
            dead_letter_queue=sqs.DeadLetterQueue(
                queue=self.dlq, max_receive_count=MAX_RECEIVE_COUNT
            ),
        )

    def connect(
        self,
        *,
        dispatcher: lambda_.Function,
        poller: lambda_.IFunction,
        batch_size: int = 5,
        poll_every: Duration = Duration.minutes(1),
    ) -> None:
        """Feed the queue to ``dispatcher``; run ``poller`` on a schedule and on Braket events.

        Raises:
            ValueError: ``dispatcher``'s timeout is longer than the queue was made for.
        """
        timeout = dispatcher.timeout.to_seconds() if dispatcher.timeout else 3
        if timeout > self._dispatcher_timeout_s:
            raise ValueError(
                f"the dispatcher's timeout ({timeout} s) exceeds the "
                f"{self._dispatcher_timeout_s} s the queue's visibility timeout "
                f"({VISIBILITY_FACTOR}x) was sized for"
            )
        dispatcher.add_event_source(
            event_sources.SqsEventSource(
                self.queue,
                batch_size=batch_size,
                max_batching_window=Duration.seconds(1),
                report_batch_item_failures=True,
            )
        )

        self.poll_rule = events.Rule(
            self,
            "Poll",
            description="qlayer: poll open QPU tasks",
            schedule=events.Schedule.rate(poll_every),
            targets=[targets.LambdaFunction(poller, retry_attempts=2)],
        )
        self.braket_rule = events.Rule(
            self,
            "BraketTaskStateChange",
            description="qlayer: finish a QPU task when its Braket task ends",
            event_pattern=events.EventPattern(
                source=["aws.braket"],
                detail_type=["Braket Task State Change"],
                detail={"status": ["COMPLETED", "FAILED", "CANCELLED"]},
            ),
            targets=[targets.LambdaFunction(poller, retry_attempts=4)],
        )
