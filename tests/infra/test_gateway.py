"""The Qiskit Serverless gateway on the stack: API Gateway, its function, its token (issue 11)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from aws_cdk.assertions import Match, Template
from qlayer_infra.extract import functions_by_name
from qlayer_infra.gateway import BINARY_MEDIA_TYPES, TOKEN_LENGTH
from qlayer_infra.stack import QlayerStack

from qlayer.aws.config import GATEWAY_TOKEN_SECRET_ARN_ENV

from .conftest import make_app, resources_of


def _statements_of(template_json: dict[str, Any], function: str) -> list[dict[str, Any]]:
    lid = functions_by_name(template_json)[function]
    role = template_json["Resources"][lid]["Properties"]["Role"]["Fn::GetAtt"][0]
    return [
        s
        for p in resources_of(template_json, "AWS::IAM::Policy").values()
        if {"Ref": role} in p["Properties"]["Roles"]
        for s in p["Properties"]["PolicyDocument"]["Statement"]
    ]


def _grants(statements: list[dict[str, Any]]) -> set[tuple[str, str]]:
    out = set()
    for s in statements:
        actions = s["Action"] if isinstance(s["Action"], list) else [s["Action"]]
        resources = s["Resource"] if isinstance(s["Resource"], list) else [s["Resource"]]
        out |= {(a, json.dumps(r, sort_keys=True)) for a in actions for r in resources}
    return out


def _ref(stack: QlayerStack, token: str) -> str:
    return json.dumps(stack.resolve(token), sort_keys=True)


def test_a_regional_rest_api_proxies_every_path_to_the_gateway_function(
    template: Template, template_json: dict[str, Any], stack: QlayerStack
) -> None:
    template.has_resource_properties(
        "AWS::ApiGateway::RestApi",
        {
            "Name": "qlayer-dev-gateway",
            "BinaryMediaTypes": list(BINARY_MEDIA_TYPES),
            "EndpointConfiguration": {"Types": ["REGIONAL"]},
        },
    )
    function = stack.resolve(stack.compute.functions["gateway"].function_arn)
    methods = resources_of(template_json, "AWS::ApiGateway::Method").values()
    integrations = [m["Properties"]["Integration"] for m in methods]
    assert len(integrations) == 2  # "/" and "/{proxy+}", method ANY
    for integration in integrations:
        assert integration["Type"] == "AWS_PROXY"
        assert function in integration["Uri"]["Fn::Join"][1]
    template.has_resource_properties("AWS::ApiGateway::Resource", {"PathPart": "{proxy+}"})
    template.has_resource_properties(
        "AWS::Lambda::Permission",
        {"Principal": "apigateway.amazonaws.com", "FunctionName": function},
    )


def test_the_stage_throttles_logs_access_without_headers_and_traces(
    template: Template, template_json: dict[str, Any], stack: QlayerStack
) -> None:
    (stage,) = resources_of(template_json, "AWS::ApiGateway::Stage").values()
    props = stage["Properties"]
    assert props["StageName"] == "dev"
    assert props["TracingEnabled"] is True
    (settings,) = props["MethodSettings"]
    assert settings == {
        "DataTraceEnabled": False,  # bodies hold tokens and user data
        "HttpMethod": "*",
        "LoggingLevel": "ERROR",
        "MetricsEnabled": True,
        "ResourcePath": "/*",
        "ThrottlingBurstLimit": 40,
        "ThrottlingRateLimit": 20,
    }
    logs = stack.gateway.access_logs
    assert props["AccessLogSetting"]["DestinationArn"] == stack.resolve(logs.log_group_arn)
    fields = json.loads(props["AccessLogSetting"]["Format"])
    assert {"status", "httpMethod", "resourcePath", "ip"} <= set(fields)
    assert "header" not in props["AccessLogSetting"]["Format"].lower()
    template.has_resource(
        "AWS::Logs::LogGroup",
        {
            "Properties": {"KmsKeyId": stack.resolve(stack.ops.key.key_arn), "RetentionInDays": 30},
            "DeletionPolicy": "Retain",
        },
    )


def test_throttling_follows_the_properties_and_refuses_nonsense(tmp_path) -> None:
    stack = QlayerStack(make_app(tmp_path / "a"), "Q", gateway_rate_limit=5, gateway_burst_limit=10)
    Template.from_stack(stack).has_resource_properties(
        "AWS::ApiGateway::Stage",
        {
            "MethodSettings": [
                Match.object_like({"ThrottlingRateLimit": 5, "ThrottlingBurstLimit": 10})
            ]
        },
    )
    with pytest.raises(ValueError, match="gateway rate_limit"):
        QlayerStack(make_app(tmp_path / "b"), "Q", gateway_burst_limit=0)


def test_the_token_is_generated_by_secrets_manager_under_the_stack_key(
    template: Template, stack: QlayerStack, template_json: dict[str, Any]
) -> None:
    (secret,) = [
        r
        for lid, r in resources_of(template_json, "AWS::SecretsManager::Secret").items()
        if lid.startswith("GatewayToken")
    ]
    props = secret["Properties"]
    assert "SecretString" not in props  # nothing of the token is in the template
    assert props["GenerateSecretString"] == {
        "ExcludePunctuation": True,
        "IncludeSpace": False,
        "PasswordLength": TOKEN_LENGTH,
    }
    assert props["KmsKeyId"] == stack.resolve(stack.ops.key.key_arn)
    assert secret["DeletionPolicy"] == "Retain"
    assert "gateway-token-" in json.dumps(props["Name"])  # unique to the stack (retained)


def test_the_function_gets_the_tokens_arn_and_only_it_reads_the_token(
    template_json: dict[str, Any], stack: QlayerStack
) -> None:
    lid = functions_by_name(template_json)["gateway"]
    env = template_json["Resources"][lid]["Properties"]["Environment"]["Variables"]
    token = _ref(stack, stack.gateway.token.secret_arn)
    assert json.dumps(env[GATEWAY_TOKEN_SECRET_ARN_ENV], sort_keys=True) == token
    readers = [
        name
        for name in functions_by_name(template_json)
        if ("secretsmanager:GetSecretValue", token) in _grants(_statements_of(template_json, name))
    ]
    assert readers == ["gateway"]
    providers = _ref(stack, stack.ops.providers_secret.secret_arn)
    grants = _grants(_statements_of(template_json, "gateway"))
    assert ("secretsmanager:GetSecretValue", providers) not in grants


def test_the_gateway_starts_lists_and_stops_jobs_and_deletes_only_users_files(
    template_json: dict[str, Any], stack: QlayerStack
) -> None:
    grants = _grants(_statements_of(template_json, "gateway"))
    machine = _ref(stack, stack.workflow.state_machine.state_machine_arn)
    assert ("states:StartExecution", machine) in grants
    assert {a for a, _ in grants if a.startswith("states:")} == {
        "states:StartExecution",
        "states:StopExecution",
    }
    index = json.dumps(
        {"Fn::Join": ["", [stack.resolve(stack.storage.jobs.table_arn), "/index/by_created"]]},
        sort_keys=True,
    )
    assert {r for a, r in grants if a == "dynamodb:Query"} == {index}
    assert ("sqs:SendMessage", _ref(stack, stack.dispatch.queue.queue_arn)) in grants
    deletes = {(a, r) for a, r in grants if "Delete" in a}
    files = _ref(stack, stack.storage.bucket.arn_for_objects("serverless/files/*"))
    assert deletes == {("s3:DeleteObject", files)}


def test_outputs_name_the_url_and_the_tokens_secret(template: Template, stack) -> None:
    outputs = template.to_json()["Outputs"]
    url = json.dumps(outputs["GatewayUrl"]["Value"])
    assert "execute-api" in url and stack.resolve(stack.gateway.api.rest_api_id)["Ref"] in url
    assert outputs["GatewayTokenSecretArn"]["Value"] == stack.resolve(
        stack.gateway.token.secret_arn
    )
