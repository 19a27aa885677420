"""Stage 7: the thesis's five convolutional autoencoders (thesis 5.4.4) as plain ``nn.Module``s.

Names: ``shallow-res-original``, ``shallow-res-preact``, ``myronenko``, ``skip-cae``, ``res-unet``. All take
N x C x H x W images in [0, 1] (H, W divisible by 8) and return the same shape in (0, 1); with the defaults
(``in_channels=1``, ``latent_channels=128``) they are the thesis's models, parameter for parameter.
"""

from __future__ import annotations

from brainae.models.blocks import Autoencoder, kernel_parameters
from brainae.models.registry import (
    ARCHITECTURES,
    THESIS_PARAMETERS,
    architecture_kwargs,
    architecture_names,
    build_model,
    count_parameters,
)

__all__ = [
    "ARCHITECTURES",
    "THESIS_PARAMETERS",
    "Autoencoder",
    "architecture_kwargs",
    "architecture_names",
    "build_model",
    "count_parameters",
    "kernel_parameters",
]
