"""Myronenko-style residual autoencoder (thesis 5.4.4.2): ``myronenko``.

No saved Keras model of this architecture is published (the file was too large), so it is derived from the
thesis text and Fig. 5.14 (encoder of Myronenko's BraTS 2018 network one level shallower: full
pre-activation blocks, downsampling by stride-2 convolutions *outside* the blocks, a SpatialDropout layer, the
decoder of the other models, latent 16 x 16 x 128), with the layer details (filters, order, 1x1 shortcut
convolutions in every block, dropout rate 0.1) taken as facts from the thesis's public code:

- stem: 3x3 conv, 32 filters, stride 1 (no BN), then SpatialDropout2D(0.1) (``nn.Dropout2d``);
- pre-activation block 32 -> 32; 3x3 conv stride 2 (32) -> 64 x 64;
- blocks 32 -> 64, 64 -> 64; 3x3 conv stride 2 (64) -> 32 x 32;
- blocks 64 -> 128, 128 -> 128; 3x3 conv stride 2 (``latent_channels``) -> latent 16 x 16 x 128;
- every block has a 1x1 stride-1 projection shortcut (even when widths match), taking the raw block input;
- decoder: upsampling blocks to 64, 32, 16 filters, 3x3 conv to one channel with sigmoid.

Count check: 320 (stem) + 19,808 + 9,248 + 57,920 + 78,528 + 36,928 + 230,528 + 312,704 + 147,584 (encoder)
+ 74,048 + 18,592 + 4,688 + 145 (decoder) = 991,041, exactly the thesis's figure. No weights exist to check
the numerics against Keras; the blocks are the ones verified on the other models.
"""

from __future__ import annotations

import torch

from brainae.models.blocks import Autoencoder, ResidualBlockPreact, SameConv2d, check_spatial


class MyronenkoAE(Autoencoder):
    """Myronenko-style residual autoencoder (991,041 parameters with the defaults).

    Args:
        in_channels: image channels; the output has the same number.
        latent_channels: filters of the last downsampling convolution (128 in the thesis).
        dropout: SpatialDropout rate after the stem (0.1 in the thesis; active in training mode only).
    """

    def __init__(self, in_channels: int = 1, latent_channels: int = 128, dropout: float = 0.1) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.latent_channels = latent_channels
        self.stem = SameConv2d(in_channels, 32, 3, stride=1)
        self.dropout = torch.nn.Dropout2d(dropout)
        self.block32 = ResidualBlockPreact(32, 32, project=True)
        self.down1 = SameConv2d(32, 32, 3, stride=2)
        self.block64a = ResidualBlockPreact(32, 64, project=True)
        self.block64b = ResidualBlockPreact(64, 64, project=True)
        self.down2 = SameConv2d(64, 64, 3, stride=2)
        self.block128a = ResidualBlockPreact(64, 128, project=True)
        self.block128b = ResidualBlockPreact(128, 128, project=True)
        self.down3 = SameConv2d(128, latent_channels, 3, stride=2)
        self._add_plain_decoder()

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Latent code. Shapes: N x C x H x W -> N x latent_channels x H / 8 x W / 8."""
        check_spatial(x, self.downsampling)
        y = self.down1(self.block32(self.dropout(self.stem(x))))
        y = self.down2(self.block64b(self.block64a(y)))
        return self.down3(self.block128b(self.block128a(y)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruct (see :meth:`Autoencoder.forward`)."""
        return self._plain_decode(self.encode(x))
