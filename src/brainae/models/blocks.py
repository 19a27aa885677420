"""Shared building blocks of the thesis's autoencoders, with Keras numerics.

The thesis's models were Keras 2.4 models. To import their weights exactly (and to train new models that
behave like them) the blocks reproduce three Keras conventions:

- ``padding='same'`` with stride 2 pads only at the bottom/right (TensorFlow puts the odd pixel after), so a
  strided 3x3 convolution is an explicit asymmetric ``F.pad`` followed by an unpadded convolution
  (:class:`SameConv2d`);
- a transposed convolution with ``padding='same'`` is an unpadded transposed convolution whose last row and
  column are dropped, giving exactly ``stride * H`` (:class:`SameConvTranspose2d`);
- batch normalisation uses ``eps=1e-3`` and Keras momentum 0.99, i.e. torch ``momentum=0.01``
  (:func:`batch_norm`).

Blocks: :class:`ConvBNReLU`, :class:`ResidualBlockOriginal` (He et al. 2015: conv-BN-ReLU-conv-BN, add,
ReLU), :class:`ResidualBlockPreact` (He et al. 2016, full pre-activation: BN-ReLU-conv-BN-ReLU-conv, add),
:class:`UpBlock` (transposed conv stride 2 + BN + ReLU) and :class:`SkipUpBlock` (transposed conv + BN, add an
encoder feature map, ReLU), plus :func:`kernel_parameters` for the L2 kernel penalty.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from brainae.errors import BrainaeError

BN_EPS = 1e-3
"""Keras ``BatchNormalization`` default epsilon."""

BN_MOMENTUM = 0.01
"""torch momentum equivalent to Keras ``momentum=0.99`` (torch weighs the new batch, Keras the old one)."""


def batch_norm(channels: int) -> nn.BatchNorm2d:
    """A ``BatchNorm2d`` with Keras defaults (eps 1e-3, momentum 0.99 in Keras terms)."""
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


def _same_pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow 'same' padding (before, after) for one spatial dimension."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class SameConv2d(nn.Conv2d):
    """``Conv2d`` with Keras/TensorFlow ``padding='same'`` semantics (extra padding at bottom/right).

    Stride-1 odd kernels use torch's symmetric padding (identical to TensorFlow's); other cases pad explicitly
    in ``forward``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1) -> None:
        symmetric = stride == 1 and kernel_size % 2 == 1
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=kernel_size // 2 if symmetric else 0,
            bias=True,
        )
        self._explicit_pad = not symmetric

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Convolve. Shapes: N x C_in x H x W -> N x C_out x ceil(H / s) x ceil(W / s)."""
        if self._explicit_pad:
            top, bottom = _same_pads(x.shape[-2], self.kernel_size[0], self.stride[0])
            left, right = _same_pads(x.shape[-1], self.kernel_size[1], self.stride[1])
            if top or bottom or left or right:
                x = F.pad(x, (left, right, top, bottom))
        return super().forward(x)


class SameConvTranspose2d(nn.ConvTranspose2d):
    """``ConvTranspose2d`` with Keras ``padding='same'``: output exactly ``stride`` times the input size.

    Computed as an unpadded transposed convolution followed by cropping (for kernel 3, stride 2: drop the last
    row and column), which is what TensorFlow's ``conv2d_transpose`` does.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 2) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=0, bias=True)
        extra_h = max(kernel_size - stride, 0)
        self._crop = (extra_h // 2, extra_h - extra_h // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Upsample. Shapes: N x C_in x H x W -> N x C_out x (s * H) x (s * W)."""
        y = super().forward(x)
        before, after = self._crop
        if before or after:
            h, w = y.shape[-2], y.shape[-1]
            y = y[..., before : h - after, before : w - after]
        return y


class ConvBNReLU(nn.Module):
    """Convolution ('same', optionally strided) -> batch norm -> ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1) -> None:
        super().__init__()
        self.conv = SameConv2d(in_channels, out_channels, kernel_size, stride)
        self.bn = batch_norm(out_channels)

    def forward_with_preactivation(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(bn_output, relu_output)``; the first is what the skip-CAE sends to its decoder."""
        y = self.bn(self.conv(x))
        return y, F.relu(y)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Shapes: N x C_in x H x W -> N x C_out x ceil(H / s) x ceil(W / s)."""
        return F.relu(self.bn(self.conv(x)))


def _shortcut(
    in_channels: int, out_channels: int, stride: int, project: bool | None, kernel_size: int
) -> nn.Module | None:
    if project is None:  # the thesis's rule: project only when the block downsamples
        project = stride != 1 or in_channels != out_channels
    if not project:
        return None
    return SameConv2d(in_channels, out_channels, kernel_size, stride)


class ResidualBlockOriginal(nn.Module):
    """Original residual block (He et al. 2015): conv(s) -> BN -> ReLU -> conv -> BN, + shortcut, ReLU.

    The shortcut is the identity, or a ``shortcut_kernel`` x ``shortcut_kernel`` convolution with the block's
    stride (no batch norm) when the block downsamples or changes the width, or always when ``project=True``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        *,
        project: bool | None = None,
        shortcut_kernel: int = 1,
    ) -> None:
        super().__init__()
        self.conv1 = SameConv2d(in_channels, out_channels, 3, stride)
        self.bn1 = batch_norm(out_channels)
        self.conv2 = SameConv2d(out_channels, out_channels, 3, 1)
        self.bn2 = batch_norm(out_channels)
        self.shortcut = _shortcut(in_channels, out_channels, stride, project, shortcut_kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Shapes: N x C_in x H x W -> N x C_out x H / s x W / s."""
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        s = x if self.shortcut is None else self.shortcut(x)
        return F.relu(s + y)


class ResidualBlockPreact(nn.Module):
    """Full pre-activation residual block (He et al. 2016): BN-ReLU-conv(s)-BN-ReLU-conv, + shortcut.

    The shortcut takes the block's raw input (as in the thesis's Keras code): identity, or a projection
    convolution with the block's stride (``project=None``: only when downsampling or changing width;
    ``project=True``: always, as in the Myronenko encoder).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        *,
        project: bool | None = None,
        shortcut_kernel: int = 1,
    ) -> None:
        super().__init__()
        self.bn1 = batch_norm(in_channels)
        self.conv1 = SameConv2d(in_channels, out_channels, 3, stride)
        self.bn2 = batch_norm(out_channels)
        self.conv2 = SameConv2d(out_channels, out_channels, 3, 1)
        self.shortcut = _shortcut(in_channels, out_channels, stride, project, shortcut_kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Shapes: N x C_in x H x W -> N x C_out x H / s x W / s."""
        y = self.conv1(F.relu(self.bn1(x)))
        y = self.conv2(F.relu(self.bn2(y)))
        s = x if self.shortcut is None else self.shortcut(x)
        return s + y


class UpBlock(nn.Module):
    """Decoder block: transposed conv (3x3, stride 2, 'same') -> BN -> ReLU; doubles H and W."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = SameConvTranspose2d(in_channels, out_channels, 3, 2)
        self.bn = batch_norm(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Shapes: N x C_in x H x W -> N x C_out x 2H x 2W."""
        return F.relu(self.bn(self.conv(x)))


class SkipUpBlock(nn.Module):
    """Skip-CAE decoder block: transposed conv (stride 2) -> BN -> + encoder feature map -> ReLU."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = SameConvTranspose2d(in_channels, out_channels, 3, 2)
        self.bn = batch_norm(out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """Shapes: x N x C_in x H x W, skip N x C_out x 2H x 2W -> N x C_out x 2H x 2W."""
        return F.relu(self.bn(self.conv(x)) + skip)


class OutputHead(nn.Module):
    """Final 3x3 'same' convolution to the image channels, then sigmoid."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = SameConv2d(in_channels, out_channels, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Shapes: N x C_in x H x W -> N x C_out x H x W, values in (0, 1)."""
        return torch.sigmoid(self.conv(x))


def kernel_parameters(model: nn.Module, *, include_transposed: bool = True) -> Iterator[nn.Parameter]:
    """Yield the kernels (not biases, not batch-norm) of every convolution in ``model``.

    These are what Keras's ``kernel_regularizer=l2(1e-5)`` penalises: add ``l2 * sum((w**2).sum() for w in
    kernel_parameters(model))`` to the loss. (The thesis's Keras code did not regularise its transposed
    convolutions; pass ``include_transposed=False`` to reproduce that.)
    """
    for module in model.modules():
        if isinstance(module, nn.ConvTranspose2d):
            if include_transposed:
                yield module.weight
        elif isinstance(module, nn.Conv2d):
            yield module.weight


def check_spatial(x: torch.Tensor, factor: int = 8) -> None:
    """Raise :class:`BrainaeError` unless ``x`` is N x C x H x W with H and W divisible by ``factor``."""
    if x.dim() != 4:
        raise BrainaeError(f"model input must be N x C x H x W, got shape {tuple(x.shape)}")
    h, w = x.shape[-2], x.shape[-1]
    if h % factor or w % factor:
        raise BrainaeError(
            f"image size {h} x {w} is not divisible by {factor}; resize or pad the slices (e.g. to 128 x 128)"
        )


class Autoencoder(nn.Module):
    """Common interface of the five autoencoders (fully convolutional, three stride-2 levels).

    Subclasses set ``in_channels`` and ``latent_channels`` and implement :meth:`encode` and :meth:`forward`.
    """

    downsampling: int = 8
    in_channels: int
    latent_channels: int

    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        """Latent shape ``(C, H / 8, W / 8)`` for an ``height`` x ``width`` input (16 x 16 x 128 at 128)."""
        return (self.latent_channels, height // self.downsampling, width // self.downsampling)

    def latent_ratio(self, height: int = 128, width: int = 128) -> float:
        """Number of latent values divided by number of input values (the thesis's models: 2.0)."""
        c, h, w = self.latent_shape(height, width)
        return (c * h * w) / (self.in_channels * height * width)

    def encode(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """Latent code. Shapes: N x C x H x W -> N x latent_channels x H / 8 x W / 8."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """Reconstruct.

        Args:
            x: N x C x H x W images in [0, 1], H and W divisible by 8.

        Returns:
            N x C x H x W reconstruction in (0, 1).
        """
        raise NotImplementedError

    def _add_plain_decoder(self) -> None:
        """The decoder of ``shallow-res-*`` and ``myronenko``: upsampling blocks to 64, 32, 16 filters, then the
        output head (modules ``up1``, ``up2``, ``up3``, ``head``)."""
        self.up1 = UpBlock(self.latent_channels, 64)
        self.up2 = UpBlock(64, 32)
        self.up3 = UpBlock(32, 16)
        self.head = OutputHead(16, self.in_channels)

    def _plain_decode(self, z: torch.Tensor) -> torch.Tensor:
        """Run the decoder of :meth:`_add_plain_decoder` on a latent code."""
        return self.head(self.up3(self.up2(self.up1(z))))


class ResidualEncoderAE(Autoencoder):
    """An autoencoder whose encoder is ``shallow-res-*``'s and ``res-unet``'s: a 3x3 stem conv, 32 filters,
    stride 2 (no BN), then residual blocks to 64 (stride 2), 64 (stride 1) and ``latent_channels`` (stride 2)
    (modules ``stem``, ``block1``, ``block2``, ``block3``). Subclasses add the decoder.
    """

    def __init__(self, in_channels: int, latent_channels: int, block: type[nn.Module]) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.latent_channels = latent_channels
        self.stem = SameConv2d(in_channels, 32, 3, stride=2)
        self.block1 = block(32, 64, stride=2)
        self.block2 = block(64, 64, stride=1)
        self.block3 = block(64, latent_channels, stride=2)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Latent code. Shapes: N x C x H x W -> N x latent_channels x H / 8 x W / 8."""
        check_spatial(x, self.downsampling)
        return self.block3(self.block2(self.block1(self.stem(x))))
