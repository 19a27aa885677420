"""Skip-connection convolutional autoencoder (thesis 5.4.4.3): ``skip-cae``.

Read off the thesis's saved Keras model ``skip_con_cae_MSE_AUG_NoKReg_LRPlat.h5`` (191,041 parameters,
imports exactly). Encoder: three conv(3x3, stride 2) -> BN -> ReLU blocks to 32, 64, ``latent_channels``
filters (latent 16 x 16 x 128 at 128 x 128). Decoder: transposed conv -> BN -> (+ BN output of the encoder
block at the same size) -> ReLU to 64 and 32 filters, a plain upsampling block to 16, then a 3x3 conv with
sigmoid. The skips are *additive* and taken before the encoder's ReLU.
"""

from __future__ import annotations

import torch

from brainae.models.blocks import Autoencoder, ConvBNReLU, OutputHead, SkipUpBlock, UpBlock, check_spatial


class SkipCAE(Autoencoder):
    """Convolutional autoencoder with additive encoder-decoder skips (191,041 parameters with the defaults).

    Args:
        in_channels: image channels; the output has the same number.
        latent_channels: filters of the third encoder block (128 in the thesis).
    """

    def __init__(self, in_channels: int = 1, latent_channels: int = 128) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.latent_channels = latent_channels
        self.enc1 = ConvBNReLU(in_channels, 32, 3, stride=2)
        self.enc2 = ConvBNReLU(32, 64, 3, stride=2)
        self.enc3 = ConvBNReLU(64, latent_channels, 3, stride=2)
        self.dec3 = SkipUpBlock(latent_channels, 64)
        self.dec2 = SkipUpBlock(64, 32)
        self.dec1 = UpBlock(32, 16)
        self.head = OutputHead(16, in_channels)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Latent code (the decoder also needs the skips). Shapes: N x C x H x W -> N x latent x H/8 x W/8."""
        check_spatial(x, self.downsampling)
        return self.enc3(self.enc2(self.enc1(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruct (see :meth:`Autoencoder.forward`); the decoder also takes the encoder's skips."""
        check_spatial(x, self.downsampling)
        skip1, y = self.enc1.forward_with_preactivation(x)
        skip2, y = self.enc2.forward_with_preactivation(y)
        y = self.enc3(y)
        y = self.dec3(y, skip2)
        y = self.dec2(y, skip1)
        return self.head(self.dec1(y))
