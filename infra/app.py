#!/usr/bin/env python3
"""The qlayer CDK app: ``npx cdk synth`` (see synth.sh) or ``npx cdk deploy``.

Context: ``-c env_name=prod`` names the environment (default ``dev``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import aws_cdk as cdk

# qlayer (its env-var table, qlayer.aws.config) when run with an interpreter lacking it.
sys.path.append(str(Path(__file__).resolve().parents[1]))

from qlayer_infra import nag
from qlayer_infra.stack import QlayerStack

app = cdk.App()
QlayerStack(
    app,
    "Qlayer",
    env_name=app.node.try_get_context("env_name") or "dev",
    env=cdk.Environment(
        account=app.node.try_get_context("account") or None,
        region=app.node.try_get_context("region") or None,
    ),
)
nag.attach(app)
app.synth()
