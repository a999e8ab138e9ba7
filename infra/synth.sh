#!/usr/bin/env bash
# Synthesize the qlayer stack to infra/cdk.out/Qlayer.template.json, without Docker or an
# AWS account. Installs the pinned CDK CLI (infra/package-lock.json) if it is missing; the
# app builds the light Lambda layer (layers/light/build.sh) if it is absent or stale. Extra arguments go to `cdk synth`
# (e.g. ./synth.sh -c env_name=prod).
#   PYTHON=/path/to/python ./synth.sh   # an interpreter with aws-cdk-lib and cdk-nag
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here"
PYTHON="${PYTHON:-python3}"
export JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION=20
export CDK_DISABLE_CLI_TELEMETRY=true

if ! "$PYTHON" -c "import aws_cdk, cdk_nag" 2>/dev/null; then
  echo "synth.sh: $PYTHON lacks aws-cdk-lib/cdk-nag: pip install -r infra/requirements.txt" >&2
  exit 1
fi
[ -x node_modules/.bin/cdk ] || npm ci --no-audit --no-fund --loglevel=error
export PYTHON  # the app (re)builds layers/light/build when it is missing or stale

node_modules/.bin/cdk synth --app "$PYTHON app.py" --no-notices --no-version-reporting --quiet "$@"
echo "synthesized: $here/cdk.out/Qlayer.template.json"
