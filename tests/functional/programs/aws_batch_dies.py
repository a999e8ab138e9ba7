"""A program whose Batch stage's container dies, as an out-of-memory kill ends it (SIGKILL).

Batch reports the job FAILED (exit code 137, "Essential container in task exited"); the
state machine's submitJob.sync fails with States.TaskFailed and the job ends in ERROR.
"""

import os
import signal

from qlayer import Done, Workflow

wf = Workflow("aws_batch_dies", backend="aer")


@wf.stage(compute="batch", vcpus=1, memory_mb=512)
def crunch(args, ctx):
    print("allocating more than the container has", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
    return Done({})
