"""A Lambda stage that declares 8 GiB: more than the default stack's stage runner (4 GiB)."""

from qlayer import Done, Workflow

wf = Workflow("aws_big", backend="aer")


@wf.stage(compute="lambda", memory_mb=8192)
def big(args, ctx):
    return Done("fits")
