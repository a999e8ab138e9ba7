#!/usr/bin/env python3
"""The qlayer CDK app: ``npx cdk synth`` (see synth.sh) or ``npx cdk deploy``.

Context: ``-c env_name=prod`` names the environment (default ``dev``).
"""

import aws_cdk as cdk
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
