"""The live web dashboard (``qlayer ui``): jobs, a job's Gantt chart, logs, plots, cancel.

Needs the ``ui`` extra (``pip install 'qlayer[ui]'``). :func:`create_app` builds the
application over any client satisfying :class:`qlayer.client.QlayerClient`;
:func:`qlayer.ui.serve.serve` runs it on loopback.
"""

from __future__ import annotations

from qlayer.ui.app import create_app

__all__ = ["create_app"]
