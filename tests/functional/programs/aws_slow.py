"""A Lambda stage that sleeps past its 2-second ``timeout_s``."""

import time

from qlayer import Done, Workflow

wf = Workflow("aws_slow", backend="aer")


@wf.stage(timeout_s=2)
def slow(args, ctx):
    time.sleep(30)
    return Done("woke up")
