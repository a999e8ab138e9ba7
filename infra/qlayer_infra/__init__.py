"""The qlayer CDK app: one construct per component, composed by :class:`QlayerStack`.

Importing this package does not import aws-cdk-lib; import the submodules you need
(``qlayer_infra.stack``, ``qlayer_infra.extract``) so that ``extract`` stays usable
in a test harness that has no CDK installed.
"""

from pathlib import Path

#: The repository root: asset paths (functions/, layers/, the Dockerfiles) are relative to it.
REPO_ROOT = Path(__file__).resolve().parents[2]
