"""qlayer_infra.extract: the definition as real JSON, references resolved by the caller."""

from __future__ import annotations

import json
from typing import Any

import pytest
from qlayer_infra.compute import IMAGE_FUNCTIONS, LIGHT_FUNCTIONS
from qlayer_infra.extract import (
    ExtractError,
    all_states,
    dummy_resolver,
    functions_by_name,
    resolve_intrinsics,
    state_machine_definition,
)


def test_caller_resolves_every_reference(template_json: dict[str, Any]) -> None:
    fn_ids = functions_by_name(template_json)
    assert set(fn_ids) == set(LIGHT_FUNCTIONS) | set(IMAGE_FUNCTIONS)
    by_id = {lid: name for name, lid in fn_ids.items()}
    fallback = dummy_resolver(template_json)
    asked: list[tuple[str, str]] = []

    def resolve(lid: str, attr: str) -> str:
        asked.append((lid, attr))
        if lid in by_id:
            return f"arn:aws:lambda:eu-west-1:111111111111:function:moto-{by_id[lid]}"
        return fallback(lid, attr)

    definition = state_machine_definition(
        template_json, resolve, pseudo={"AWS::Region": "eu-west-1"}
    )
    text = json.dumps(definition)
    assert "Fn::" not in text and '"Ref"' not in text and "${" not in text
    states = all_states(definition)
    assert (
        states["Load job"]["Resource"]
        == "arn:aws:lambda:eu-west-1:111111111111:function:moto-loader"
    )
    assert states["Fan in"]["Resource"].endswith("moto-fan_in")
    assert states["Run stage on Lambda"]["Resource"].endswith("moto-stage_runner")
    assert states["Wait for QPU"]["Resource"] == "arn:aws:states:::sqs:sendMessage.waitForTaskToken"
    assert states["Run child job"]["Parameters"]["StateMachineArn"].startswith(
        "arn:aws:states:eu-west-1:"
    )
    assert {lid for lid, _ in asked} >= set(fn_ids.values()) - {
        fn_ids["trigger"],
        fn_ids["dispatcher"],
        fn_ids["poller"],
        fn_ids["gateway"],  # behind API Gateway, not in the state machine
    }


def test_intrinsics() -> None:
    resolve = lambda lid, attr: f"<{lid}.{attr}>"  # noqa: E731
    value = {
        "a": {"Fn::Join": ["-", ["x", {"Ref": "Thing"}, {"Fn::GetAtt": ["Fn", "Arn"]}]]},
        "b": {"Fn::Sub": "${AWS::Region}/${Thing}/${Fn.Arn}"},
        "c": {"Fn::Sub": ["${x}!", {"x": {"Ref": "AWS::AccountId"}}]},
        "d": {"Fn::Select": [1, {"Fn::Split": [":", "p:q:r"]}]},
        "e": {"Fn::GetAtt": "Fn.Arn"},
    }
    assert resolve_intrinsics(value, resolve) == {
        "a": "x-<Thing.Ref>-<Fn.Arn>",
        "b": "us-east-1/<Thing.Ref>/<Fn.Arn>",
        "c": "123456789012!",
        "d": "q",
        "e": "<Fn.Arn>",
    }
    with pytest.raises(ExtractError, match="Fn::ImportValue"):
        resolve_intrinsics({"Fn::ImportValue": "x"}, resolve)


def test_definition_substitutions_and_errors() -> None:
    template = {
        "Resources": {
            "M": {
                "Type": "AWS::StepFunctions::StateMachine",
                "Properties": {
                    "DefinitionString": (
                        '{"StartAt":"A","States":{"A":{"Type":"Task","Resource":"${Fn}",'
                        '"End":true}}}'
                    ),
                    "DefinitionSubstitutions": {"Fn": {"Fn::GetAtt": ["F", "Arn"]}},
                },
            },
            "F": {"Type": "AWS::Lambda::Function", "Properties": {}},
        }
    }
    definition = state_machine_definition(template)
    assert (
        definition["States"]["A"]["Resource"] == "arn:aws:lambda:us-east-1:123456789012:function:F"
    )
    with pytest.raises(ExtractError, match="0 state machines"):
        state_machine_definition({"Resources": {}})
    with pytest.raises(ExtractError, match="no state machine 'X'"):
        state_machine_definition(template, logical_id="X")
