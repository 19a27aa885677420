"""Shallow residual autoencoders (thesis 5.4.4.1): ``shallow-res-original`` and ``shallow-res-preact``.

The two architectures differ only in the residual block, so they share one class here.

Encoder: 3x3 conv, 32 filters, stride 2 (linear, no BN) -> residual block to 64 filters with stride 2 (1x1
stride-2 projection shortcut) -> residual block 64 -> 64, stride 1 (identity shortcut) -> residual block to
``latent_channels`` (128) with stride 2 (1x1 projection) = latent 16 x 16 x 128 at 128 x 128.
Decoder: three upsampling blocks (transposed conv stride 2 + BN + ReLU) to 64, 32, 16 filters, then a 3x3
conv to one channel with sigmoid.

``shallow-res-preact`` is read off the thesis's saved Keras model
(``small_res_cae_MSE_full_pre_AUG_NoKReg_LRPlat.h5``): 460,609 parameters, imports exactly.

``shallow-res-original`` has no saved model. It is the same network with the original block (conv(s) -> BN
-> ReLU -> conv -> BN, + shortcut, ReLU; the shortcut has no BN, and the stem conv feeds the first block
without BN/ReLU), as the thesis text (Fig. 5.11) and the thesis code's block definition describe. Count check:
the pre-activation model has BN on 32+64 / 64+64 / 64+128 channels (416 x 4 = 1,664 BN parameters), the
original one on 64+64 / 64+64 / 128+128 channels (512 x 4 = 2,048), all else identical: 460,609 + 384 =
460,993, exactly the thesis's count for its current code. (The published model with original blocks came
from an older variant with two consecutive BN layers, 462,017 parameters, and is not reproduced.)
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from brainae.models.blocks import ResidualBlockOriginal, ResidualBlockPreact, ResidualEncoderAE


class ShallowResidualAE(ResidualEncoderAE):
    """Shallow residual autoencoder with original or full pre-activation residual blocks.

    Args:
        in_channels: image channels (1 for T1 slices); the output has the same number.
        latent_channels: filters of the last encoder block (128 in the thesis; smaller for a real bottleneck).
        block: ``"original"`` or ``"preact"``.
    """

    def __init__(
        self,
        in_channels: int = 1,
        latent_channels: int = 128,
        block: Literal["original", "preact"] = "preact",
    ) -> None:
        if block not in ("original", "preact"):
            raise ValueError(f"block must be 'original' or 'preact', got {block!r}")
        super().__init__(
            in_channels,
            latent_channels,
            ResidualBlockOriginal if block == "original" else ResidualBlockPreact,
        )
        self.block_type = block
        self._add_plain_decoder()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruct (see :meth:`Autoencoder.forward`)."""
        return self._plain_decode(self.encode(x))


def shallow_res_original(in_channels: int = 1, latent_channels: int = 128) -> nn.Module:
    """``shallow-res-original``: original residual blocks (460,993 parameters with the defaults)."""
    return ShallowResidualAE(in_channels, latent_channels, block="original")


def shallow_res_preact(in_channels: int = 1, latent_channels: int = 128) -> nn.Module:
    """``shallow-res-preact``: full pre-activation residual blocks (460,609 parameters with the defaults)."""
    return ShallowResidualAE(in_channels, latent_channels, block="preact")
