"""brainae: normative deep convolutional autoencoders for T1-weighted brain MRI.

The pipeline runs one way: NIfTI volumes -> prepared slice dataset -> trained model -> metrics / report ->
NIfTI outputs. Each stage is one module; the command line (``brainae``) is a thin layer on top.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "anomaly", "build_model", "denoise", "inpaint", "load_model"]


def __getattr__(name: str):  # lazy: importing brainae must not import torch
    if name in ("denoise", "inpaint", "anomaly"):
        from brainae import api

        return getattr(api, name)
    if name == "build_model":
        from brainae.models import build_model

        return build_model
    if name == "load_model":
        from brainae.checkpoint import load_model

        return load_model
    raise AttributeError(f"module 'brainae' has no attribute {name!r}")
