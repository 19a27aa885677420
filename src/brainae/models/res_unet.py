"""Residual U-Net autoencoder (thesis 5.4.4.4): ``res-unet``.

Read off the thesis's saved Keras models ``res_skip_cae_{MSE,DSSIM}_AUG_NoKReg_LRPlat.h5`` (483,649
parameters, import exactly). The encoder is that of ``shallow-res-preact`` (stem conv stride 2, full
pre-activation blocks 32->64 stride 2, 64->64, 64->``latent_channels`` stride 2). Decoder: upsampling block
to 64, concatenated (decoder first, then encoder) with the output of the second residual block -> upsampling
block to 32, concatenated with the stem's output -> upsampling block to 16 -> 3x3 conv with sigmoid.
"""

from __future__ import annotations

import torch

from brainae.models.blocks import OutputHead, ResidualBlockPreact, ResidualEncoderAE, UpBlock, check_spatial


class ResUNet(ResidualEncoderAE):
    """U-Net with full pre-activation residual blocks and concatenation skips (483,649 parameters).

    Args:
        in_channels: image channels; the output has the same number.
        latent_channels: filters of the last encoder block (128 in the thesis).
    """

    def __init__(self, in_channels: int = 1, latent_channels: int = 128) -> None:
        super().__init__(in_channels, latent_channels, ResidualBlockPreact)
        self.up1 = UpBlock(latent_channels, 64)
        self.up2 = UpBlock(64 + 64, 32)
        self.up3 = UpBlock(32 + 32, 16)
        self.head = OutputHead(16, in_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruct (see :meth:`Autoencoder.forward`); the decoder also takes the encoder's skips."""
        check_spatial(x, self.downsampling)
        s1 = self.stem(x)
        s2 = self.block2(self.block1(s1))
        y = self.up1(self.block3(s2))
        y = self.up2(torch.cat([y, s2], dim=1))
        y = self.up3(torch.cat([y, s1], dim=1))
        return self.head(y)
