"""The cloud in a box: the deployed qlayer stack, minus AWS (``pip install 'qlayer[cloudbox]'``).

moto's server plays AWS over HTTP on 127.0.0.1; everything else is the stack's own:
the synthesized template's resources, the extracted state machine, each Lambda function
in its own processes with its own environment, Batch jobs as processes, the SQS event
source mapping and the EventBridge rules run as AWS runs them. See docs/deploy.md
("The cloud in a box") for what it emulates and what it does not.

One job per module: :mod:`~qlayer.cloudbox.server` (moto's server),
:mod:`~qlayer.cloudbox.patches` (the moto internals replaced),
:mod:`~qlayer.cloudbox.deploy` (the template into moto),
:mod:`~qlayer.cloudbox.runtimes` and :mod:`~qlayer.cloudbox.bootstrap` (Lambda),
:mod:`~qlayer.cloudbox.batch` (Batch), :mod:`~qlayer.cloudbox.pumps` (SQS, EventBridge),
:mod:`~qlayer.cloudbox.box` (all of it together), :mod:`~qlayer.cloudbox.synth`.
"""

from __future__ import annotations

from qlayer.cloudbox.box import BoxOptions, CloudBox
from qlayer.cloudbox.synth import Synthesis, synthesize

__all__ = ["BoxOptions", "CloudBox", "Synthesis", "synthesize"]
