"""Least privilege: what each function (and the Batch containers, and the state machine's Batch
states) may do, action by action.

CDK's ``grant_read_write`` helpers give more than any step here uses (``s3:DeleteObject*``,
``s3:Abort*``, ``dynamodb:Scan``, ``dynamodb:DeleteItem``), so every grant below names its
actions. Nothing in qlayer deletes an artifact or a row: artifacts are overwritten in a
versioned bucket, rows are updated.

The tables in this module are the contract; tests/infra/test_access.py reads the
synthesized policies back against them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from aws_cdk import ArnFormat, Stack
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_iam as iam
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_secretsmanager as secretsmanager
from aws_cdk import aws_sqs as sqs
from aws_cdk import aws_stepfunctions as sfn
from constructs import Construct

from qlayer_infra.storage import (
    ENVS_PREFIX,
    INBOX_PREFIX,
    JOBS_PREFIX,
    PROGRAMS_PREFIX,
    SERVERLESS_FILES_PREFIX,
    SERVERLESS_PREFIX,
)

#: Read an artifact; write one (log objects are written with a tag, which needs
#: PutObjectTagging); tell a missing key from a forbidden one (HeadObject answers 403
#: instead of 404 without ListBucket, and ``exists()`` would raise).
S3_READ = ("s3:GetObject",)
S3_WRITE = ("s3:PutObject", "s3:PutObjectTagging")
S3_LIST = ("s3:ListBucket",)
#: The one delete in the stack: a Qiskit Serverless user removing one of their own files
#: (``DELETE files/delete/``), under ``serverless/files/`` only.
S3_DELETE_USER_FILE = ("s3:DeleteObject",)

#: Job rows: read one or many, update (conditionally), check a condition in a transaction;
#: the steps that start a job or its children also create rows.
JOB_ROWS = (
    "dynamodb:GetItem",
    "dynamodb:BatchGetItem",
    "dynamodb:UpdateItem",
    "dynamodb:ConditionCheckItem",
)
JOB_ROWS_CREATE = ("dynamodb:PutItem",)
#: QPU task rows (dispatcher, poller): claims, slots and outcomes, some in transactions;
#: the poller lists open tasks on the ``by_status`` index.
TASK_ROWS = (
    "dynamodb:GetItem",
    "dynamodb:PutItem",
    "dynamodb:UpdateItem",
    "dynamodb:ConditionCheckItem",
    "dynamodb:Query",
)
TASKS_INDEX = "by_status"
#: The gateway lists jobs newest first on the jobs table's ``by_created`` index.
JOB_LIST = ("dynamodb:Query",)
JOBS_INDEX = "by_created"


@dataclass(frozen=True)
class Access:
    """One role's access to the artifacts bucket (by key prefix) and the jobs table."""

    reads: tuple[str, ...]
    writes: tuple[str, ...]
    creates_jobs: bool = False
    job_rows: bool = True


_STEP = Access(reads=(JOBS_PREFIX,), writes=(JOBS_PREFIX,))
#: Those that run user code also read environments (``envs/*``), never write them.
_WITH_PROGRAMS = Access(reads=(PROGRAMS_PREFIX, JOBS_PREFIX, ENVS_PREFIX), writes=(JOBS_PREFIX,))
#: The loader and "Check environment" (read_outcome) look for a job's built environment.
_LOADS = Access(
    reads=(PROGRAMS_PREFIX, JOBS_PREFIX, ENVS_PREFIX), writes=(JOBS_PREFIX,), creates_jobs=True
)
_REPORTS = Access(reads=(JOBS_PREFIX,), writes=(JOBS_PREFIX, INBOX_PREFIX))

#: Handler (or ``"batch"``, ``"env_build"``) -> its access. The trigger reads an inbox spec
#: and the program it names, uploads the program bundle, writes the job's inputs and a
#: report next to the spec; the finaliser and fail_job report the outcome next to the spec.
#: The environment build runs a package installer: it reads a lock and writes the built
#: environment, under ``envs/`` only, and has no job row, secret or job data.
ACCESS: dict[str, Access] = {
    "trigger": Access(
        reads=(INBOX_PREFIX, PROGRAMS_PREFIX),
        writes=(INBOX_PREFIX, PROGRAMS_PREFIX, JOBS_PREFIX),
        creates_jobs=True,
    ),
    "loader": _LOADS,
    "start_children": Access(
        (PROGRAMS_PREFIX, JOBS_PREFIX), _WITH_PROGRAMS.writes, creates_jobs=True
    ),
    "stage_runner": _WITH_PROGRAMS,
    "batch": _WITH_PROGRAMS,
    "env_build": Access(reads=(ENVS_PREFIX,), writes=(ENVS_PREFIX,), job_rows=False),
    "simulator": _STEP,
    "read_outcome": Access(reads=(JOBS_PREFIX, ENVS_PREFIX), writes=(JOBS_PREFIX,)),
    "fan_in": _STEP,
    "finaliser": _REPORTS,
    "fail_job": _REPORTS,
    "dispatcher": _STEP,
    "poller": _STEP,
    # The Qiskit Serverless gateway keeps functions and users' files (serverless/), makes
    # a program of each function, starts jobs and reads their results, logs and events.
    "gateway": Access(
        reads=(PROGRAMS_PREFIX, JOBS_PREFIX, SERVERLESS_PREFIX),
        writes=(PROGRAMS_PREFIX, JOBS_PREFIX, SERVERLESS_PREFIX),
        creates_jobs=True,
    ),
}

#: Who reads the provider secret: the dispatcher and poller (submit, poll, cancel), and the
#: code that runs stages, Lambda and Batch alike: ``ctx.target`` of an ``ibm_*`` backend
#: needs the IBM account (issue 7 item 3).
SECRET_READERS = ("dispatcher", "poller", "stage_runner", "batch")
#: Who asks Braket for a device (``ctx.target`` of a Braket backend; the dispatcher).
DEVICE_READERS = ("stage_runner", "batch", "dispatcher", "poller")


def grant_artifacts(
    principal: iam.IGrantable, bucket: s3.IBucket, jobs: dynamodb.ITable, access: Access
) -> None:
    """``access`` on the artifacts bucket and the jobs table, action by action."""
    policy = principal.grant_principal
    statements = [
        iam.PolicyStatement(
            actions=list(S3_READ), resources=[bucket.arn_for_objects(f"{p}*") for p in access.reads]
        ),
        iam.PolicyStatement(
            actions=list(S3_WRITE),
            resources=[bucket.arn_for_objects(f"{p}*") for p in access.writes],
        ),
        iam.PolicyStatement(actions=list(S3_LIST), resources=[bucket.bucket_arn]),
    ]
    if access.job_rows:
        statements.append(
            iam.PolicyStatement(
                actions=[*JOB_ROWS, *(JOB_ROWS_CREATE if access.creates_jobs else ())],
                resources=[jobs.table_arn],
            )
        )
    for statement in statements:
        policy.add_to_principal_policy(statement)


def grant_tasks(principal: iam.IGrantable, tasks: dynamodb.ITable) -> None:
    """The dispatcher's and poller's use of the QPU task table and its ``by_status`` index."""
    principal.grant_principal.add_to_principal_policy(
        iam.PolicyStatement(
            actions=list(TASK_ROWS),
            resources=[tasks.table_arn, f"{tasks.table_arn}/index/{TASKS_INDEX}"],
        )
    )


def grant_braket_results(principal: iam.IGrantable, bucket: s3.IBucket) -> None:
    """Read and write task results and manifests in the Braket bucket; no delete."""
    principal.grant_principal.add_to_principal_policy(
        iam.PolicyStatement(actions=[*S3_READ, *S3_WRITE], resources=[bucket.arn_for_objects("*")])
    )
    principal.grant_principal.add_to_principal_policy(
        iam.PolicyStatement(actions=list(S3_LIST), resources=[bucket.bucket_arn])
    )


def braket_device_arns(stack: Stack, regions: Sequence[str] = ()) -> list[str]:
    """Braket devices: the QPUs and simulators of the stack's region (and of ``regions``:
    Braket QPUs live in one region each), the account's, and the on-demand simulators
    (SV1, DM1, TN1), whose ARNs have no region (``arn:aws:braket:::device/...``)."""
    partition, account = stack.partition, stack.account
    arns = []
    for region in (stack.region, *regions):
        arns += [
            f"arn:{partition}:braket:{region}::device/*",
            f"arn:{partition}:braket:{region}:{account}:device/*",
        ]
    return [*arns, f"arn:{partition}:braket:::device/quantum-simulator/*"]


def braket_task_arns(stack: Stack, regions: Sequence[str] = ()) -> list[str]:
    """Quantum tasks of this account, in the stack's region and ``regions`` (a task lives in
    its device's region)."""
    return [
        stack.format_arn(
            service="braket",
            region=region,
            resource="quantum-task",
            resource_name="*",
            arn_format=ArnFormat.SLASH_RESOURCE_NAME,
        )
        for region in (stack.region, *regions)
    ]


def grant_braket(
    principal: iam.IGrantable,
    stack: Stack,
    *,
    submit: bool,
    tasks: bool,
    regions: Sequence[str] = (),
) -> None:
    """GetDevice on Braket devices; with ``submit``, CreateQuantumTask on them; with
    ``tasks``, Get/CancelQuantumTask on this account's quantum tasks (and, with ``submit``,
    SearchQuantumTasks, which takes no resource). ``regions``: Braket
    regions beyond the stack's."""
    devices = braket_device_arns(stack, regions)
    actions = ["braket:GetDevice", *(["braket:CreateQuantumTask"] if submit else [])]
    policy = principal.grant_principal
    policy.add_to_principal_policy(iam.PolicyStatement(actions=actions, resources=devices))
    if submit:
        # find_job's fallback: the device's recent tasks tagged with a key (a crash before
        # the manifest). SearchQuantumTasks has no resource-level permissions.
        policy.add_to_principal_policy(
            iam.PolicyStatement(actions=["braket:SearchQuantumTasks"], resources=["*"])
        )
        if isinstance(principal, Construct):
            from qlayer_infra.nag import ack

            ack(
                principal,
                "braket:SearchQuantumTasks takes no resource (the service authorization "
                "reference lists none): the look-up of the tasks tagged with a request's "
                "key after a crash, on this function only",
                "AwsSolutions-IAM5[Resource::*]",
            )
    if tasks:
        policy.add_to_principal_policy(
            iam.PolicyStatement(
                actions=["braket:GetQuantumTask", "braket:CancelQuantumTask"],
                resources=braket_task_arns(stack, regions),
            )
        )


def grant_secret_read(
    principals: Mapping[str, iam.IGrantable], secret: secretsmanager.ISecret
) -> None:
    """GetSecretValue (and decrypt through Secrets Manager with the stack's key)."""
    for principal in principals.values():
        secret.grant_read(principal)


def grant_stop_executions(principal: iam.IGrantable, stack: Stack, state_machine_name: str) -> None:
    """StopExecution on executions of the job state machine (a job's siblings, on failure)."""
    principal.grant_principal.add_to_principal_policy(
        iam.PolicyStatement(
            actions=["states:StopExecution"],
            resources=[
                stack.format_arn(
                    service="states",
                    resource="execution",
                    resource_name=f"{state_machine_name}:*",
                    arn_format=ArnFormat.COLON_RESOURCE_NAME,
                )
            ],
        )
    )


def grant_gateway(
    principal: iam.IGrantable,
    *,
    bucket: s3.IBucket,
    jobs: dynamodb.ITable,
    token: secretsmanager.ISecret,
    dispatch_queue: sqs.IQueue,
    state_machine: sfn.IStateMachine,
    state_machine_name: str,
) -> None:
    """What the gateway needs beyond its :data:`ACCESS` row: list jobs (``by_created``),
    delete a user's file, read its own token, start a job's execution, stop it and ask the
    dispatcher to cancel its provider job (a client's cancel)."""
    stack = Stack.of(jobs)
    principal.grant_principal.add_to_principal_policy(
        iam.PolicyStatement(
            actions=list(S3_DELETE_USER_FILE),
            resources=[bucket.arn_for_objects(f"{SERVERLESS_FILES_PREFIX}*")],
        )
    )
    principal.grant_principal.add_to_principal_policy(
        iam.PolicyStatement(
            actions=list(JOB_LIST), resources=[f"{jobs.table_arn}/index/{JOBS_INDEX}"]
        )
    )
    token.grant_read(principal)
    state_machine.grant_start_execution(principal)
    grant_stop_executions(principal, stack, state_machine_name)
    dispatch_queue.grant_send_messages(principal)


def grant_all(
    *,
    principals: Mapping[str, iam.IGrantable],
    bucket: s3.IBucket,
    jobs: dynamodb.ITable,
    tasks: dynamodb.ITable,
    braket_results: s3.IBucket,
    secret: secretsmanager.ISecret,
    dispatch_queue: sqs.IQueue,
    state_machine: sfn.IStateMachine,
    state_machine_name: str,
    gateway_token: secretsmanager.ISecret,
    braket_regions: Sequence[str] = (),
    qpu_functions: Sequence[str] = ("dispatcher", "poller"),
) -> None:
    """Every grant of the stack's functions and the Batch job role (``principals`` by name).

    The trigger starts executions; the dispatcher and poller finish task tokens; fail_job
    sends cancel messages to the dispatcher and stops sibling executions; the gateway
    (:func:`grant_gateway`) starts, lists and cancels jobs and reads its token.
    """
    stack = Stack.of(bucket)
    for name, access in ACCESS.items():
        grant_artifacts(principals[name], bucket, jobs, access)
    grant_secret_read({n: principals[n] for n in SECRET_READERS}, secret)
    for name in DEVICE_READERS:
        grant_braket(
            principals[name],
            stack,
            submit=name == "dispatcher",
            tasks=name in qpu_functions,
            regions=braket_regions,
        )
    for name in qpu_functions:
        grant_tasks(principals[name], tasks)
        grant_braket_results(principals[name], braket_results)
        state_machine.grant_task_response(principals[name])
    state_machine.grant_start_execution(principals["trigger"])
    dispatch_queue.grant_send_messages(principals["fail_job"])
    dispatch_queue.grant_send_messages(principals["finaliser"])  # close a job's QPU session
    grant_stop_executions(principals["fail_job"], stack, state_machine_name)
    grant_gateway(
        principals["gateway"],
        bucket=bucket,
        jobs=jobs,
        token=gateway_token,
        dispatch_queue=dispatch_queue,
        state_machine=state_machine,
        state_machine_name=state_machine_name,
    )


def grant_batch_jobs(state_machine: sfn.StateMachine, resources: Sequence[str]) -> None:
    """The job state machine's Batch states: SubmitJob to ``resources`` (its queues and job
    definitions), and what ``submitJob.sync`` needs to follow and stop the jobs."""
    stack = Stack.of(state_machine)
    state_machine.add_to_role_policy(
        iam.PolicyStatement(actions=["batch:SubmitJob"], resources=list(resources))
    )
    # submitJob.sync: Step Functions watches the job through a managed EventBridge rule
    # (DescribeJobs has no resource-level permissions) and terminates it when the
    # execution stops: only jobs of this account and region.
    state_machine.add_to_role_policy(
        iam.PolicyStatement(actions=["batch:DescribeJobs"], resources=["*"])
    )
    state_machine.add_to_role_policy(
        iam.PolicyStatement(
            actions=["batch:TerminateJob"],
            resources=[stack.format_arn(service="batch", resource="job", resource_name="*")],
        )
    )
    state_machine.add_to_role_policy(
        iam.PolicyStatement(
            actions=["events:PutTargets", "events:PutRule", "events:DescribeRule"],
            resources=[
                stack.format_arn(
                    service="events",
                    resource="rule",
                    resource_name="StepFunctionsGetEventsForBatchJobsRule",
                )
            ],
        )
    )
