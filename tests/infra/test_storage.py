"""Storage: the artifacts bucket and the job/task tables."""

from __future__ import annotations

import json

from aws_cdk.assertions import Match, Template


def test_artifacts_bucket_is_encrypted_versioned_private_and_logged(template: Template) -> None:
    template.has_resource_properties(
        "AWS::S3::Bucket",
        {
            "BucketEncryption": {
                "ServerSideEncryptionConfiguration": [
                    {"ServerSideEncryptionByDefault": {"SSEAlgorithm": Match.any_value()}}
                ]
            },
            "VersioningConfiguration": {"Status": "Enabled"},
            "PublicAccessBlockConfiguration": {
                "BlockPublicAcls": True,
                "BlockPublicPolicy": True,
                "IgnorePublicAcls": True,
                "RestrictPublicBuckets": True,
            },
            "LoggingConfiguration": {
                "DestinationBucketName": Match.any_value(),
                "LogFilePrefix": "artifacts/",
            },
        },
    )


def test_log_versions_expire_by_tag_under_jobs(template: Template) -> None:
    template.has_resource_properties(
        "AWS::S3::Bucket",
        {
            "LifecycleConfiguration": {
                "Rules": Match.array_with(
                    [
                        Match.object_like(
                            {
                                "Prefix": "jobs/",
                                "TagFilters": [{"Key": "qlayer-artifact", "Value": "log"}],
                                "NoncurrentVersionExpiration": {
                                    "NoncurrentDays": Match.any_value()
                                },
                                "Status": "Enabled",
                            }
                        )
                    ]
                )
            }
        },
    )


def test_every_bucket_refuses_plain_http(template: Template) -> None:
    policies = template.find_resources("AWS::S3::BucketPolicy")
    assert len(policies) == len(template.find_resources("AWS::S3::Bucket"))
    for policy in policies.values():
        statements = policy["Properties"]["PolicyDocument"]["Statement"]
        assert any(
            s["Effect"] == "Deny"
            and s.get("Condition", {}).get("Bool", {}).get("aws:SecureTransport") == "false"
            for s in statements
        )


def test_inbox_json_uploads_notify_the_trigger(template: Template, stack) -> None:
    trigger = stack.resolve(stack.compute.functions["trigger"].function_arn)
    template.has_resource_properties(
        "Custom::S3BucketNotifications",
        {
            "NotificationConfiguration": {
                "LambdaFunctionConfigurations": [
                    {
                        "Events": ["s3:ObjectCreated:*"],
                        "Filter": {
                            "Key": {
                                "FilterRules": Match.array_with(
                                    [
                                        {"Name": "suffix", "Value": ".json"},
                                        {"Name": "prefix", "Value": "inbox/"},
                                    ]
                                )
                            }
                        },
                        "LambdaFunctionArn": trigger,
                    }
                ]
            }
        },
    )


def test_braket_results_bucket_has_the_name_braket_requires(template: Template) -> None:
    template.has_resource_properties(
        "AWS::S3::Bucket",
        {
            "BucketName": {
                "Fn::Join": ["", Match.array_with([Match.string_like_regexp("^amazon-braket-")])]
            }
        },
    )


def test_jobs_table(template: Template) -> None:
    template.has_resource_properties(
        "AWS::DynamoDB::Table",
        {
            "KeySchema": [{"AttributeName": "job_id", "KeyType": "HASH"}],
            "BillingMode": "PAY_PER_REQUEST",
            "PointInTimeRecoverySpecification": {"PointInTimeRecoveryEnabled": True},
            "SSESpecification": {"SSEEnabled": True},
            "GlobalSecondaryIndexes": [
                Match.object_like(
                    {
                        "IndexName": "by_created",
                        "KeySchema": [
                            {"AttributeName": "kind", "KeyType": "HASH"},
                            {"AttributeName": "created_at", "KeyType": "RANGE"},
                        ],
                    }
                )
            ],
        },
    )


def test_qpu_tasks_table_expires_items(template: Template) -> None:
    template.has_resource_properties(
        "AWS::DynamoDB::Table",
        {
            "KeySchema": [{"AttributeName": "idempotency_key", "KeyType": "HASH"}],
            "TimeToLiveSpecification": {"AttributeName": "expires_at", "Enabled": True},
            "PointInTimeRecoverySpecification": {"PointInTimeRecoveryEnabled": True},
            "SSESpecification": {"SSEEnabled": True},
        },
    )


def test_data_is_retained_by_default(template: Template) -> None:
    for rtype in ("AWS::DynamoDB::Table", "AWS::S3::Bucket"):
        for res in template.find_resources(rtype).values():
            assert res["DeletionPolicy"] == "Retain", rtype


def test_braket_bucket_name_is_unique_to_the_stack(template: Template, stack) -> None:
    """amazon-braket-qlayer-<env>-<account>-<region> collided with the retained bucket of a
    destroyed stack (and a second stack of the same env in the account)."""
    from qlayer_infra.extract import DEFAULT_PSEUDO, resolve_intrinsics

    lid = stack.resolve(stack.storage.braket_results.node.default_child.logical_id)
    bucket = template.to_json()["Resources"][lid]
    name = resolve_intrinsics(bucket["Properties"]["BucketName"], lambda lid, attr: lid)
    tail = DEFAULT_PSEUDO["AWS::StackId"].rsplit("-", 1)[1]
    assert name == f"amazon-braket-qlayer-dev-{tail}"
    assert name.startswith("amazon-braket-") and name == name.lower()
    assert bucket["DeletionPolicy"] == "Retain"
    assert "AWS::StackId" in json.dumps(bucket["Properties"]["BucketName"])


def test_braket_bucket_name_fits_for_the_longest_env_name() -> None:
    from qlayer_infra.naming import SUFFIX_LENGTH
    from qlayer_infra.storage import BUCKET_NAME_MAX, braket_bucket_name

    stem = braket_bucket_name("a" * 12).split("${Token")[0]
    assert len(stem) + SUFFIX_LENGTH <= BUCKET_NAME_MAX
