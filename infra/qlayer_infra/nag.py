"""cdk-nag (AwsSolutions) findings this stack accepts, each with its reason.

cdk-nag 3 runs as a CDK policy-validation plugin (``attach(app)``) and findings
are acknowledged with ``Validations.of(construct).acknowledge(...)``, one finding
id at a time (``AwsSolutions-IAM5[Resource::...]``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from aws_cdk import Acknowledgment, App, CfnResource, Stack, Validations
from constructs import IConstruct

if TYPE_CHECKING:
    from qlayer_infra.compute import Compute
    from qlayer_infra.dispatch import Dispatch
    from qlayer_infra.gateway import Gateway
    from qlayer_infra.storage import Storage
    from qlayer_infra.workflow import JobWorkflow


def attach(app: App) -> None:
    """Run the AwsSolutions pack at synthesis; an unacknowledged finding stops it."""
    from cdk_nag import AwsSolutionsChecks

    Validations.of(app).add_plugins(AwsSolutionsChecks(app))


def ack(scope: IConstruct, reason: str, *ids: str) -> None:
    """Acknowledge findings ``ids`` on ``scope`` and everything under it."""
    Validations.of(scope).acknowledge(*(Acknowledgment(id=i, reason=reason) for i in ids))


def logical_id(construct: IConstruct) -> str:
    """The CloudFormation logical id of ``construct`` (or of its default resource)."""
    resource = construct if isinstance(construct, CfnResource) else construct.node.default_child
    stack = Stack.of(construct)
    return str(stack.resolve(stack.get_logical_id(resource)))  # type: ignore[arg-type]


def acknowledge(
    stack: Stack,
    *,
    storage: Storage,
    compute: Compute,
    workflow: JobWorkflow,
    dispatch: Dispatch,
    gateway: Gateway,
    braket_regions: Sequence[str] = (),
) -> None:
    """The accepted findings of QlayerStack, narrowest scope first."""
    bucket = logical_id(storage.bucket)

    # -- IAM wildcards on resources scoped to one bucket prefix, one account's devices/jobs ----
    ack(
        stack,
        "Object ARNs under one key prefix of the artifacts bucket (jobs/*, programs/*, inbox/*, "
        "envs/*) or in the Braket results bucket: a step reads and writes objects whose keys "
        "hold job ids or environment hashes known only at run time (qlayer_infra/access.py "
        "lists the actions, none deletes)",
        f"AwsSolutions-IAM5[Resource::<{bucket}.Arn>/jobs/*]",
        f"AwsSolutions-IAM5[Resource::<{bucket}.Arn>/programs/*]",
        f"AwsSolutions-IAM5[Resource::<{bucket}.Arn>/inbox/*]",
        f"AwsSolutions-IAM5[Resource::<{bucket}.Arn>/envs/*]",
        f"AwsSolutions-IAM5[Resource::<{logical_id(storage.braket_results)}.Arn>/*]",
    )
    ack(
        stack,
        "CDK's grant on the stack's customer-managed KMS key: GenerateDataKey*/ReEncrypt* on "
        "that one key, to read and write the encrypted queues, logs and secret",
        "AwsSolutions-IAM5[Action::kms:GenerateDataKey*]",
        "AwsSolutions-IAM5[Action::kms:ReEncrypt*]",
    )
    region_account = "<AWS::Region>:<AWS::AccountId>"
    ack(
        stack,
        "Amazon Braket devices are named by the user at run time (a backend name or device "
        "ARN): GetDevice/CreateQuantumTask on the region's and account's devices and the "
        "region-less on-demand simulators; Get/CancelQuantumTask on this account's quantum "
        "tasks, whose ids exist only after creation",
        "AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:braket:::device/quantum-simulator/*]",
        *(
            f"AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:braket:{arn}]"
            for region in ("<AWS::Region>", *braket_regions)
            for arn in (
                f"{region}::device/*",
                f"{region}:<AWS::AccountId>:device/*",
                f"{region}:<AWS::AccountId>:quantum-task/*",
            )
        ),
    )
    ack(
        stack,
        "submitJob.sync terminates the job of a stopped execution: batch:TerminateJob on this "
        "account's and region's Batch jobs (job ids exist only after submission); fail_job "
        "stops sibling executions of the job state machine (execution:qlayer-<env>-jobs:*)",
        f"AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:batch:{region_account}:job/*]",
        f"AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:states:{region_account}:execution:"
        f"{workflow.name}:*]",
    )
    ack(
        stack,
        "Actions with no resource-level permissions: X-Ray PutTraceSegments/PutTelemetryRecords "
        "(active tracing) and batch:DescribeJobs (submitJob.sync watches the job)",
        "AwsSolutions-IAM5[Resource::*]",
    )
    # -- Lambda: managed execution policy and runtime -----------------------------------------
    ack(
        compute,
        "AWSLambdaBasicExecutionRole only allows writing the function's own CloudWatch logs",
        "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/"
        "AWSLambdaBasicExecutionRole]",
    )
    ack(
        compute,
        "Batch EC2 instances need the ECS agent policy AmazonEC2ContainerServiceforEC2Role to join "
        "the compute environment's ECS cluster",
        "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/"
        "AmazonEC2ContainerServiceforEC2Role]",
    )
    ack(
        compute,
        "Python 3.11 on purpose: the light layer's binary wheels (pydantic-core) and the "
        "runner images "
        "are built for CPython 3.11, the project's minimum supported version",
        "AwsSolutions-L1",
    )
    # -- Step Functions: invoking Lambda versions, running children ----------------------------
    invoked = [logical_id(fn) for fn in compute.functions.values()]
    ack(
        workflow,
        "CDK's LambdaInvoke grants lambda:InvokeFunction on the function and its versions/aliases "
        "(<fn>:*) for each function the state machine calls",
        *(f"AwsSolutions-IAM5[Resource::<{lid}.Arn>:*]" for lid in invoked),
    )
    machine = logical_id(workflow.state_machine)
    exec_prefix = "arn:<AWS::Partition>:states:<AWS::Region>:<AWS::AccountId>:execution:"
    select = '{"Fn::Select":[6,{"Fn::Split":[":",{"Ref":"' + machine + '"}]}]}'
    ack(
        workflow,
        "Fan-out children are executions of this same state machine: Describe/StopExecution on its "
        "own executions (execution:<name>*), and the Distributed Map's child executions; the "
        "Distributed Map reads the children list (an object key known only at run time) from the "
        "artifacts bucket",
        f"AwsSolutions-IAM5[Resource::{exec_prefix}{workflow.name}*]",
        f"AwsSolutions-IAM5[Resource::{exec_prefix}{select}:*]",
        f"AwsSolutions-IAM5[Resource::{exec_prefix}{select}/*:*]",
        f"AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:s3:::<{bucket}>/*]",
    )
    # CDK's singleton that puts the S3 -> trigger notification configuration on the bucket.
    for child in stack.node.children:
        if child.node.id.startswith("BucketNotificationsHandler"):
            ack(
                child,
                "CDK's bucket-notification custom resource writes only its own logs with "
                "AWSLambdaBasicExecutionRole",
                "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/"
                "AWSLambdaBasicExecutionRole]",
            )
    # -- Secrets -------------------------------------------------------------------------------
    ops_secret = stack.node.find_child("Ops").node.find_child("Providers")
    ack(
        ops_secret,
        "Provider tokens are issued by IBM Quantum / AWS outside this stack and cannot be "
        "rotated by "
        "a Lambda here; rotate them at the provider and update the secret (see infra/README.md)",
        "AwsSolutions-SMG4",
    )
    _acknowledge_gateway(gateway, bucket=bucket, function=compute.functions["gateway"])


def _acknowledge_gateway(gateway: Gateway, *, bucket: str, function: IConstruct) -> None:
    """The Qiskit Serverless gateway's API, token and function (qlayer_infra/gateway.py)."""
    ack(
        function,
        "The gateway keeps uploaded functions and users' files under serverless/ (keys hold "
        "function titles known only at run time) and deletes a user's file under "
        "serverless/files/ when the user asks (qlayer_infra/access.py: grant_gateway)",
        f"AwsSolutions-IAM5[Resource::<{bucket}.Arn>/serverless/*]",
        f"AwsSolutions-IAM5[Resource::<{bucket}.Arn>/serverless/files/*]",
    )
    ack(
        gateway.token,
        "The gateway token is a random string generated by Secrets Manager, not a database "
        "credential a rotation Lambda could change on both sides: rotate it by putting a new "
        "random value (docs/deploy.md); the function re-reads it within five minutes",
        "AwsSolutions-SMG4",
    )
    assert gateway.api is not None
    ack(
        gateway.api,
        "Authorization is the Qiskit Serverless client's own scheme: a bearer token that the "
        "gateway function compares (constant time) with the stack's Secrets Manager secret "
        "before any route runs; the client speaks neither SigV4 nor Cognito",
        "AwsSolutions-APIG4",
        "AwsSolutions-COG4",
    )
    ack(
        gateway.api,
        "Requests are validated by the gateway function (route, method, bounded body, JSON "
        "and multipart/form-data fields) with 4xx answers; an API Gateway request validator "
        "cannot read multipart uploads",
        "AwsSolutions-APIG2",
    )
    ack(
        gateway.api,
        "No WAF web ACL by default (a per-request charge the stack does not impose): the "
        "stage throttles (gateway_rate_limit, gateway_burst_limit) and every route needs the "
        "token; attach a web ACL to the stage where one is wanted",
        "AwsSolutions-APIG3",
    )
    ack(
        gateway.api,
        "API Gateway writes execution logs to CloudWatch through the account's role with the "
        "AWS managed AmazonAPIGatewayPushToCloudWatchLogs policy (logs only)",
        "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/"
        "AmazonAPIGatewayPushToCloudWatchLogs]",
    )
