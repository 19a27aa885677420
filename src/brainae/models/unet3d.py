"""A small 3-D U-Net: brainae's own volumetric model for denoising, inpainting and anomaly detection.

The thesis's autoencoders see one 128 x 128 sagittal slice at a time, resampled to a fixed field of view: the
round trip to that grid blurs a scan, each slice is processed alone (streaks in the other two planes), and a
hole or a lesion is judged without its neighbours above and below. :class:`UNet3d` is fully convolutional in
3-D: it runs on a whole volume (or on overlapping blocks of it) at the voxel grid it is given, so a result
keeps the input's resolution and is consistent in every plane.

Layout (``widths=(16, 32, 64)`` shown)::

    in (C_in) -> [conv3 act conv3 act]16 ---------------------------------------> concat -> [conv3 act]x2 16 -> 1x1 -> out
                   | stride-2 conv                                                  ^ transposed conv x2
                   [conv3 act conv3 act]32 ----------------------> concat -> [..]32
                          | stride-2 conv                            ^
                          [conv3 act conv3 act]64 (bottom) ----------+

No normalisation layers: the output at a voxel depends only on its neighbourhood (the receptive field), so
processing a volume in overlapping blocks gives the same result as processing it whole (see
:func:`brainae.volumetric.run_blocks`), and a single patch at training time behaves as a whole volume at
apply time. ``residual=True`` adds the first input channel to the output (the network predicts a correction,
which makes "leave a clean scan alone" easy to learn). ``skips=False`` removes the skip connections (a plain
bottleneck autoencoder, for comparison).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["UNet3d"]


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(c_in, c_out, 3, padding=1),
        nn.LeakyReLU(0.1, inplace=True),
        nn.Conv3d(c_out, c_out, 3, padding=1),
        nn.LeakyReLU(0.1, inplace=True),
    )


class UNet3d(nn.Module):
    """3-D U-Net with strided-convolution down-sampling and transposed-convolution up-sampling.

    Args:
        in_channels: input channels (1 image, plus e.g. a hole mask for inpainting).
        out_channels: output channels.
        widths: channels per level, finest first; ``len(widths) - 1`` down-samplings, so every spatial size
            must be divisible by ``2 ** (len(widths) - 1)`` (:func:`brainae.volumetric.run_blocks` pads).
        residual: add input channel 0 to the output.
        skips: concatenate encoder features into the decoder (a U-Net); False gives a plain autoencoder.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        widths: Sequence[int] = (16, 32, 64),
        residual: bool = True,
        skips: bool = True,
    ) -> None:
        super().__init__()
        widths = [int(w) for w in widths]
        if len(widths) < 2 or any(w < 1 for w in widths):
            raise ValueError(f"widths {widths}: give at least two positive channel counts")
        self.residual = bool(residual)
        self.skips = bool(skips)
        self.factor = 2 ** (len(widths) - 1)
        self.enc = nn.ModuleList([_block(in_channels, widths[0])])
        self.down = nn.ModuleList()
        for c_prev, c in zip(widths[:-1], widths[1:]):
            self.down.append(
                nn.Sequential(nn.Conv3d(c_prev, c_prev, 3, 2, 1), nn.LeakyReLU(0.1, inplace=True))
            )
            self.enc.append(_block(c_prev, c))
        self.up = nn.ModuleList()
        self.dec = nn.ModuleList()
        for c_prev, c in zip(widths[:0:-1], widths[-2::-1]):
            self.up.append(nn.ConvTranspose3d(c_prev, c, 2, 2))
            self.dec.append(_block(2 * c if skips else c, c))
        self.head = nn.Conv3d(widths[0], out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        """N x C_in x D x H x W (each spatial size divisible by ``self.factor``) -> N x C_out x D x H x W."""
        feats = []
        h = self.enc[0](x)
        for down, enc in zip(self.down, self.enc[1:]):
            feats.append(h)
            h = enc(down(h))
        for up, dec in zip(self.up, self.dec):
            h = up(h)
            skip = feats.pop()
            h = dec(torch.cat([h, skip], dim=1) if self.skips else h)
        out = self.head(h)
        if self.residual:
            out = out + x[:, : out.shape[1]]
        return out
