"""Storage: the artifacts bucket and the job/task tables."""

from __future__ import annotations

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
