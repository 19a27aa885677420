"""Pretrained checkpoints shipped inside the package (see README.md in this folder for credit and license)."""

from __future__ import annotations

from pathlib import Path

THESIS_RES_UNET = Path(__file__).resolve().parent / "thesis-res-unet-mse.safetensors"


def resolve_model_name(model: str | Path) -> Path:
    """A checkpoint path from a file name or a shipped model's name (denoise, inpaint, anomaly, atlas, normative,
    thesis): the one resolver of model names, used by the command line and the Python API."""
    from brainae.errors import BrainaeError
    from brainae.infer import DEFAULT_ATLAS, DEFAULT_MODELS
    from brainae.normative import DEFAULT_NORMATIVE

    name = str(model)
    if name == "atlas":
        return DEFAULT_ATLAS
    if name == "normative":
        return DEFAULT_NORMATIVE
    if name in DEFAULT_MODELS:
        return DEFAULT_MODELS[name]
    if name == "thesis":
        return THESIS_RES_UNET
    path = Path(name)
    if not path.exists():
        raise BrainaeError(
            f"{path}: no such checkpoint; give a file or one of: {', '.join(DEFAULT_MODELS)}, atlas, normative, thesis"
        )
    return path
