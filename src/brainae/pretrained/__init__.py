"""Pretrained checkpoints shipped inside the package (see README.md in this folder for credit and license)."""

from __future__ import annotations

from pathlib import Path

THESIS_RES_UNET = Path(__file__).resolve().parent / "thesis-res-unet-mse.safetensors"
