"""Retry policies of the job state machine's tasks: throttling and transient service errors.

Step Functions names a service integration's errors ``<Service>.<exception>`` (the
exception class of the AWS SDK it calls): ``Lambda.TooManyRequestsException``,
``Batch.AWSBatchException``, ``SQS.AmazonSQSException``,
``StepFunctions.ExecutionLimitExceeded``; ``SdkClientException`` is a call that did not
reach the service (https://docs.aws.amazon.com/step-functions/latest/dg/concepts-error-handling.html
and the pages of each integration). A task's *own* failure is ``States.TaskFailed`` (a
Batch job that ended FAILED, a child execution that failed), ``States.Timeout`` or
``States.HeartbeatTimeout``, or the error a function raised: none of those is retried
here; they reach the catch ("Record failure" -> "Fail job"), as a failing step does
locally.

No aws-cdk-lib import: the ASL form (:meth:`RetryPolicy.asl`) is used for the Batch
states, which are written as JSON.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: Never retried: the state's own failure or timeout.
OWN_FAILURES = frozenset(
    {"States.ALL", "States.TaskFailed", "States.Timeout", "States.HeartbeatTimeout"}
)


@dataclass(frozen=True)
class RetryPolicy:
    """One Retry entry: exponential backoff with full jitter, capped at ``max_delay_s``."""

    errors: tuple[str, ...]
    interval_s: int = 2
    max_attempts: int = 10
    backoff_rate: float = 2.0
    max_delay_s: int = 60

    def __post_init__(self) -> None:
        own = OWN_FAILURES.intersection(self.errors)
        if own:
            raise ValueError(f"a retry must not cover a state's own failure: {sorted(own)}")

    def asl(self) -> dict[str, Any]:
        """The policy as an ASL Retrier."""
        return {
            "ErrorEquals": list(self.errors),
            "IntervalSeconds": self.interval_s,
            "MaxAttempts": self.max_attempts,
            "BackoffRate": self.backoff_rate,
            "MaxDelaySeconds": self.max_delay_s,
            "JitterStrategy": "FULL",
        }


#: lambda:invoke. TooManyRequestsException is the account's (or function's) concurrency
#: limit: a sweep of many children meets it, and waiting is the cure.
LAMBDA = RetryPolicy(
    (
        "Lambda.TooManyRequestsException",
        "Lambda.ServiceException",
        "Lambda.AWSLambdaException",
        "Lambda.SdkClientException",
        "Lambda.ClientExecutionTimeoutException",
    )
)
#: batch:submitJob.sync: SubmitJob throttled or failed inside Batch. Batch.ClientException
#: (a bad request: resources no queue offers, a timeout under 60 s) is not retried.
BATCH = RetryPolicy(
    (
        "Batch.AWSBatchException",
        "Batch.ServerException",
        "Batch.TooManyRequestsException",
        "Batch.SdkClientException",
    ),
    interval_s=5,
    max_attempts=8,
)
#: sqs:sendMessage.waitForTaskToken: only the SendMessage call (queue or KMS throttled, a
#: 5xx, no connection). Once the message is sent the state waits for the token; its
#: timeout and heartbeat are real failures, and so is a SendTaskFailure from the dispatcher.
SQS = RetryPolicy(
    (
        "SQS.AmazonSQSException",
        "SQS.KmsThrottledException",
        "SQS.RequestThrottledException",
        "SQS.SdkClientException",
    ),
    max_attempts=8,
)
#: states:startExecution.sync:2 of a child job: StartExecution throttled (its token
#: bucket refills at 150-300 per second, by region), the open-execution quota reached, or
#: a 5xx. A child that ran and failed is States.TaskFailed: it fails the parent.
CHILD = RetryPolicy(
    (
        "StepFunctions.ExecutionLimitExceeded",
        "StepFunctions.ThrottlingException",
        "StepFunctions.AWSStepFunctionsException",
        "StepFunctions.SdkClientException",
    ),
)
