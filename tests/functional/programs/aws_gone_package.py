"""A program whose requirement is on no package index (issue 10: a bad requirement)."""

from qlayer import Done, Workflow

wf = Workflow("aws_gone_package", requirements=["qlayer-test-gone-package==1.0"])


@wf.stage()
def never(args, ctx):
    return Done({"ran": True})
