#!/usr/bin/env bash
# Build the light Lambda layer into layers/light/build/python (no Docker needed):
# boto3, aws-lambda-powertools, pydantic for Lambda's Python 3.11 on x86_64, plus the
# qlayer package itself WITHOUT its qiskit dependencies (light handlers never import qiskit).
# The CDK app (infra/qlayer_infra/compute.py) zips that folder as the layer, and calls
# this script again when the layer is missing or older than its sources
# (--code-only: when only qlayer/ changed, refresh just the qlayer package).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
out="$here/build/python"
PYTHON="${PYTHON:-python3}"

if [ "${1:-}" = "--code-only" ] && [ -d "$out" ]; then
  rm -rf "$out/qlayer" "$out"/qlayer-*.dist-info
  "$PYTHON" -m pip install --quiet --disable-pip-version-check --no-deps --no-compile \
    --target "$out" "$repo"
  find "$out/qlayer" -type d -name "__pycache__" -prune -exec rm -rf {} +
  rm -rf "$out"/bin
  echo "light layer: refreshed qlayer in $out"
  exit 0
fi

rm -rf "$here/build"
mkdir -p "$out"

# Third-party wheels for the Lambda runtime (manylinux x86_64, CPython 3.11), never sdists.
"$PYTHON" -m pip install --quiet --disable-pip-version-check \
  --target "$out" \
  --platform manylinux2014_x86_64 --implementation cp --python-version 3.11 --only-binary=:all: \
  -r "$here/requirements.txt"

# The library, pure Python, without its dependencies (qiskit, qiskit-aer, scipy, ...).
"$PYTHON" -m pip install --quiet --disable-pip-version-check --no-deps --no-compile \
  --target "$out" "$repo"

# Trim what a Lambda never loads.
find "$out" -type d -name "__pycache__" -prune -exec rm -rf {} +
find "$out" -type d \( -name "tests" -o -name "test" \) -path "*/botocore/*" -prune -exec rm -rf {} + 2>/dev/null || true
rm -rf "$out"/bin

size=$(du -sm "$here/build" | cut -f1)
echo "light layer: $out (${size} MB unzipped)"
