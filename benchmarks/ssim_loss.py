"""SSIM as a training loss: our separable implementation vs torchmetrics (and MONAI if installed).

Prints JSON: milliseconds per forward + backward of a DSSIM loss (batch 32, 128 x 128, CPU by default),
the speed ratios measured in the same run, and the largest absolute difference of per-image SSIM against
scikit-image (``gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1``, i.e.
``tf.image.ssim``) over a batch.

Usage: ``python benchmarks/ssim_loss.py [--batch 32] [--size 128] [--repeats 10] [--device cpu]``
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import time
from collections.abc import Callable

import numpy as np
import torch
from skimage.metrics import structural_similarity

from brainae.metrics import ssim


def _time_ms(loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x, y, repeats: int) -> float:
    """Best-of-``repeats`` milliseconds of one forward + backward (minimum: robust to a busy machine)."""
    times = []
    for i in range(repeats + 2):
        xx = x.detach().clone().requires_grad_(True)
        if x.device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        loss(xx, y).backward()
        if x.device.type == "cuda":
            torch.cuda.synchronize()
        if i >= 2:  # warm-up
            times.append((time.perf_counter() - start) * 1000)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    g = torch.Generator().manual_seed(0)
    x = torch.rand(args.batch, 1, args.size, args.size, generator=g)
    y = (x + 0.1 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    x, y = x.to(args.device), y.to(args.device)

    losses: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
        "brainae": lambda a, b: ((1 - ssim(a, b)) / 2).mean()
    }
    from torchmetrics.functional.image import structural_similarity_index_measure as tm_ssim

    losses["torchmetrics"] = lambda a, b: (1 - tm_ssim(a, b, data_range=1.0)) / 2
    if importlib.util.find_spec("monai") is not None:
        from monai.losses import SSIMLoss

        monai_loss = SSIMLoss(spatial_dims=2, data_range=1.0, win_size=11, kernel_type="gaussian")
        losses["monai"] = lambda a, b: monai_loss(a, b) / 2

    ms = {name: round(_time_ms(fn, x, y, args.repeats), 2) for name, fn in losses.items()}
    ratios = {f"{name}_over_brainae": round(ms[name] / ms["brainae"], 1) for name in ms if name != "brainae"}

    xs, ys = x.cpu().double().numpy()[:, 0], y.cpu().double().numpy()[:, 0]
    ref = np.array(
        [
            structural_similarity(
                a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1
            )
            for a, b in zip(xs, ys, strict=True)
        ]
    )
    ours32 = ssim(x, y).cpu().double().numpy()
    ours64 = ssim(x.double(), y.double()).cpu().numpy()
    tm = np.array([float(tm_ssim(x[i : i + 1], y[i : i + 1], data_range=1.0)) for i in range(len(xs))])
    print(
        json.dumps(
            {
                "device": str(x.device),
                "threads": torch.get_num_threads(),
                "batch": args.batch,
                "size": args.size,
                "ms_forward_backward": ms,
                "ratios": ratios,
                "max_abs_diff_vs_skimage": {
                    "brainae_float32": float(np.abs(ours32 - ref).max()),
                    "brainae_float64": float(np.abs(ours64 - ref).max()),
                    "torchmetrics_float32": float(np.abs(tm - ref).max()),
                },
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
