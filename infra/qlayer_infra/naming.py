"""Names for resources that outlive their stack (RETAIN): unique per stack instance.

A retained bucket, secret or log group with a fixed name blocks a second environment of
the same name and a redeploy after ``cdk destroy``. Their names end in the last group of
the stack's id (``arn:...:stack/<name>/<uuid>``), which is new for every stack created.
"""

from __future__ import annotations

from aws_cdk import Aws, Fn

#: Length of :func:`unique_suffix`'s value (the last group of a UUID, lowercase hex).
SUFFIX_LENGTH = 12


def unique_suffix() -> str:
    """12 lowercase hex characters, unique to the stack using it (resolved at deploy)."""
    stack_uuid = Fn.select(2, Fn.split("/", Aws.STACK_ID))
    return Fn.select(4, Fn.split("-", stack_uuid))
