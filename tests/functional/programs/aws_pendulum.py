"""A program that needs pendulum, which neither the base nor the runner image has.

``when`` (Lambda) fans out one child per time zone (``zone``, Lambda, in the parent's
environment), and ``gather`` runs on Batch: every kind of stage runner imports it.
Requirements are imported inside the stages (the submitting process does not have them).
"""

from qlayer import Done, FanOut, Workflow

wf = Workflow(
    "aws_pendulum",
    params={"zones": ["Europe/Paris", "Asia/Tokyo"]},
    requirements=["pendulum>=3"],
)


@wf.stage()
def when(args, ctx):
    import pendulum

    ctx.log.info("pendulum %s from %s", pendulum.__version__, pendulum.__file__)
    return FanOut(list(args["zones"]), stage="zone", then="gather")


@wf.stage()
def zone(name, ctx):
    import pendulum

    return Done({"zone": name, "offset_h": pendulum.datetime(2026, 6, 1, tz=name).offset_hours})


@wf.stage(compute="batch")
def gather(results, ctx):
    import pendulum

    offsets = {r["zone"]: r["offset_h"] for r in results}
    return Done({"version": pendulum.__version__, "file": pendulum.__file__, "offsets": offsets})
