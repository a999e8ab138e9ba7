"""Where jobs live: the artifacts bucket, its access-log bucket, and the DynamoDB tables."""

from __future__ import annotations

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_s3 as s3
from constructs import Construct

from qlayer_infra.naming import SUFFIX_LENGTH, unique_suffix

#: Key prefixes (see qlayer/keys.py): uploads that start a job, and everything a job writes.
INBOX_PREFIX = "inbox/"
JOBS_PREFIX = "jobs/"
PROGRAMS_PREFIX = "programs/"
#: Program environments: locks, built archives (qlayer.aws.envs).
ENVS_PREFIX = "envs/"
#: The Qiskit Serverless gateway's records (uploaded functions) and the users' files.
SERVERLESS_PREFIX = "serverless/"
SERVERLESS_FILES_PREFIX = "serverless/files/"
#: The S3 object tag (key, value) that log objects under jobs/<id>/logs/ carry.
LOG_TAG = ("qlayer-artifact", "log")
#: Amazon Braket writes results only to buckets whose name starts with this.
BRAKET_BUCKET_PREFIX = "amazon-braket-"
BUCKET_NAME_MAX = 63


def braket_bucket_name(env_name: str) -> str:
    """``amazon-braket-qlayer-<env>-<suffix unique to the stack>`` (lowercase, <= 63).

    Raises:
        ValueError: ``env_name`` would make the name too long or not a valid bucket name.
    """
    stem = f"{BRAKET_BUCKET_PREFIX}qlayer-{env_name}-"
    if len(stem) + SUFFIX_LENGTH > BUCKET_NAME_MAX or stem != stem.lower():
        raise ValueError(f"env_name {env_name!r} cannot be part of a bucket name")
    return stem + unique_suffix()


class Storage(Construct):
    """The artifacts bucket (S3) and the ``jobs`` and ``qpu_tasks`` tables (DynamoDB).

    Attributes:
        bucket: Artifacts: ``programs/``, ``jobs/<id>/...``, ``envs/<hash>/...`` (program
            environments), and ``inbox/*.json`` uploads.
        access_logs: Server access logs of the buckets here.
        braket_results: Where Amazon Braket writes task results; Braket only writes to
            buckets named ``amazon-braket-*``. Retained, so its name is unique per stack.
        jobs: One item per job (pk ``job_id``), GSI ``by_created`` to list jobs by time.
        tasks: One item per QPU submission (pk ``idempotency_key``), expired by ``expires_at``.
    """

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        env_name: str,
        removal_policy: RemovalPolicy = RemovalPolicy.RETAIN,
        noncurrent_days: int = 30,
    ) -> None:
        super().__init__(scope, id)
        auto_delete = removal_policy == RemovalPolicy.DESTROY

        self.access_logs = s3.Bucket(
            self,
            "AccessLogs",
            encryption=s3.BucketEncryption.S3_MANAGED,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            enforce_ssl=True,
            lifecycle_rules=[
                s3.LifecycleRule(id="expire-access-logs", expiration=Duration.days(365))
            ],
            removal_policy=removal_policy,
            auto_delete_objects=auto_delete,
        )

        self.bucket = s3.Bucket(
            self,
            "Artifacts",
            encryption=s3.BucketEncryption.S3_MANAGED,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            enforce_ssl=True,
            versioned=True,
            event_bridge_enabled=False,
            server_access_logs_bucket=self.access_logs,
            server_access_logs_prefix="artifacts/",
            lifecycle_rules=[
                # A lifecycle prefix cannot hold a wildcard (jobs/*/logs/), so log objects
                # are written with the tag LOG_TAG and matched by it. Logs are appended by
                # rewriting the object, which leaves a noncurrent version per append.
                s3.LifecycleRule(
                    id="expire-old-log-versions",
                    prefix=JOBS_PREFIX,
                    tag_filters={LOG_TAG[0]: LOG_TAG[1]},
                    noncurrent_version_expiration=Duration.days(1),
                ),
                s3.LifecycleRule(
                    id="expire-old-artifact-versions",
                    prefix=JOBS_PREFIX,
                    noncurrent_version_expiration=Duration.days(noncurrent_days),
                ),
                # A rebuilt environment (after a failed or torn build) leaves the old
                # archive as a noncurrent version.
                s3.LifecycleRule(
                    id="expire-old-environment-versions",
                    prefix=ENVS_PREFIX,
                    noncurrent_version_expiration=Duration.days(1),
                ),
                s3.LifecycleRule(
                    id="expire-processed-inbox",
                    prefix=INBOX_PREFIX,
                    expiration=Duration.days(7),
                    noncurrent_version_expiration=Duration.days(1),
                ),
                s3.LifecycleRule(
                    id="abort-incomplete-uploads",
                    abort_incomplete_multipart_upload_after=Duration.days(1),
                ),
            ],
            removal_policy=removal_policy,
            auto_delete_objects=auto_delete,
        )

        self.braket_results = s3.Bucket(
            self,
            "BraketResults",
            bucket_name=braket_bucket_name(env_name),
            encryption=s3.BucketEncryption.S3_MANAGED,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            enforce_ssl=True,
            server_access_logs_bucket=self.access_logs,
            server_access_logs_prefix="braket/",
            lifecycle_rules=[
                s3.LifecycleRule(id="expire-braket-results", expiration=Duration.days(90))
            ],
            removal_policy=removal_policy,
            auto_delete_objects=auto_delete,
        )

        self.jobs = dynamodb.Table(
            self,
            "Jobs",
            partition_key=dynamodb.Attribute(name="job_id", type=dynamodb.AttributeType.STRING),
            billing_mode=dynamodb.BillingMode.PAY_PER_REQUEST,
            encryption=dynamodb.TableEncryption.AWS_MANAGED,
            point_in_time_recovery_specification=dynamodb.PointInTimeRecoverySpecification(
                point_in_time_recovery_enabled=True
            ),
            removal_policy=removal_policy,
        )
        # List jobs newest first: every item carries the constant "kind" = "job".
        self.jobs.add_global_secondary_index(
            index_name="by_created",
            partition_key=dynamodb.Attribute(name="kind", type=dynamodb.AttributeType.STRING),
            sort_key=dynamodb.Attribute(name="created_at", type=dynamodb.AttributeType.STRING),
            projection_type=dynamodb.ProjectionType.ALL,
        )

        self.tasks = dynamodb.Table(
            self,
            "QpuTasks",
            partition_key=dynamodb.Attribute(
                name="idempotency_key", type=dynamodb.AttributeType.STRING
            ),
            billing_mode=dynamodb.BillingMode.PAY_PER_REQUEST,
            encryption=dynamodb.TableEncryption.AWS_MANAGED,
            point_in_time_recovery_specification=dynamodb.PointInTimeRecoverySpecification(
                point_in_time_recovery_enabled=True
            ),
            time_to_live_attribute="expires_at",
            removal_policy=removal_policy,
        )
        # The poller lists open tasks: status "SUBMITTED" items, oldest first.
        self.tasks.add_global_secondary_index(
            index_name="by_status",
            partition_key=dynamodb.Attribute(name="status", type=dynamodb.AttributeType.STRING),
            sort_key=dynamodb.Attribute(name="submitted_at", type=dynamodb.AttributeType.STRING),
            projection_type=dynamodb.ProjectionType.ALL,
        )
