"""What to tell a user when the AWS client cannot do its job: one line, what to check.

botocore's exceptions carry tracebacks that say little to someone who typed
``qlayer --target aws run``. :func:`explain` turns the usual ones (no network, no
credentials, no region, access denied, no such stack) into a sentence with the fix.
"""

from __future__ import annotations


def explain(exc: BaseException) -> str | None:
    """A one-line explanation of a botocore/boto3 failure, or None if ``exc`` is not one."""
    from botocore import exceptions as bx

    if isinstance(exc, bx.EndpointConnectionError | bx.ConnectTimeoutError):
        url = getattr(exc, "kwargs", {}).get("endpoint_url", "")
        return (
            f"cannot reach AWS at {url or 'its endpoint'}: check the network, --region "
            "(or AWS_REGION) and, if set, AWS_ENDPOINT_URL"
        )
    if isinstance(exc, bx.ReadTimeoutError):
        return "AWS did not answer in time: check the network and try again"
    if isinstance(exc, bx.NoCredentialsError | bx.PartialCredentialsError):
        return (
            "no AWS credentials found: set AWS_PROFILE (and run `aws sso login` for SSO), "
            "or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
        )
    if isinstance(exc, bx.NoRegionError):
        return "no AWS region: pass --region or set AWS_REGION to the stack's region"
    if isinstance(exc, bx.ClientError):
        error = exc.response.get("Error", {})
        code = error.get("Code", "error")
        operation = getattr(exc, "operation_name", "a call")
        message = str(error.get("Message") or "").strip()
        hint = ""
        if code in {"AccessDenied", "AccessDeniedException", "UnauthorizedOperation"}:
            hint = "; check that your role may use the qlayer stack (docs/deploy.md)"
        elif code in {"ExpiredToken", "ExpiredTokenException", "RequestExpired"}:
            hint = "; your credentials expired: log in again"
        elif code == "ValidationError" and "does not exist" in message:
            hint = "; check --stack and --region (is the stack deployed there?)"
        return f"AWS refused {operation}: {code}: {message}{hint}"
    if isinstance(exc, bx.BotoCoreError):
        return f"AWS client error: {exc}"
    return None
