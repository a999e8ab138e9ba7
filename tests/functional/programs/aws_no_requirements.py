"""A program without requirements: it must not see another program's environment."""

from qlayer import Done, Workflow

wf = Workflow("aws_no_requirements")


@wf.stage()
def probe(args, ctx):
    try:
        import pendulum
    except ImportError:
        return Done({"pendulum": None})
    return Done({"pendulum": pendulum.__file__})
