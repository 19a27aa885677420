"""The ``brainae`` command line: one module per pipeline stage registers its commands on one app.

- :mod:`brainae.cli.data`: ``inspect``, ``prepare``
- :mod:`brainae.cli.models`: ``train``, ``grid``, ``import-keras``
- :mod:`brainae.cli.volumetric`: ``fit``, ``info``
- :mod:`brainae.cli.evaluation`: ``evaluate``, ``stats``, ``report``
- :mod:`brainae.cli.apply`: ``denoise``, ``inpaint``, ``reconstruct``, ``anomaly``
- :mod:`brainae.cli.view`: ``view``
- :mod:`brainae.cli.demo`: ``demo``
- :mod:`brainae.cli.fetch`: ``fetch``
"""

from __future__ import annotations

import importlib

from brainae.cli._app import app, main

for _stage in (
    "data",
    "models",
    "volumetric",
    "evaluation",
    "apply",
    "view",
    "demo",
    "fetch",
):  # pipeline order is --help's order
    importlib.import_module(f"brainae.cli.{_stage}")

__all__ = ["app", "main"]
