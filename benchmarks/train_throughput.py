"""Training throughput: brainae's real training step vs a minimal plain-PyTorch loop, timed in interleaved blocks.

brainae side: ``lightning.Trainer.fit`` on :class:`brainae.train.AutoencoderModule` (data held on the device,
batches drawn there by index from a per-epoch permutation, inputs corrupted there with
``brainae.corrupt.augment``). Reference side: the same model, batch, precision (``torch.autocast`` +
GradScaler for fp16), RMSprop settings, loss and the SAME ``augment`` call, as a bare loop over synthetic data on
the device. Both use synthetic 128 x 128 images and the thesis's MSE loss.

Interleaving: after the warm-up, every block of ``--block`` brainae steps (1 on CPU; 20 on a GPU, so that the
GPU keeps its queue full between synchronisations) is followed by as many reference steps, run from a
callback at the end of brainae's step (``on_train_batch_end``), so that the two sides of a pair run back to
back and a change of machine load hits both alike. A brainae block is timed from the end of the previous
reference block (or of the warm-up) to the end of its last optimizer step, so it includes everything
Lightning's loop does between steps (fetching the batch, hooks); a reference block is timed around its step
calls (CUDA synchronised at both ends). Each pair gives a ratio ``reference seconds / brainae seconds``; the reported
ratio is the median of all pairs of all ``--repeats`` fits (on a shared CPU a burst of load that hits one side
of one pair moves the median of the pairs far less than it moves a ratio of two separately timed runs).

Prints ONE JSON object: ``{"device": ..., "results": [{"arch", "batch", "precision", "brainae_img_s",
"reference_img_s", "ratio", "ratio_per_repeat", "pairs"}, ...]}`` (img/s from the median block times; ratio =
median of the pair ratios, brainae / reference in throughput terms; ``ratio_per_repeat`` = the same median
per fit; the quality bar is >= 0.8).

    python benchmarks/train_throughput.py --steps 8                         # CPU: five archs, batch 32, fp32
    python benchmarks/train_throughput.py --archs res-unet --batch 256 --precision bf16-mixed --channels-last
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import time
import warnings

import torch

from brainae.corrupt import AugmentConfig, augment
from brainae.metrics import make_loss
from brainae.models import architecture_names, build_model
from brainae.train import AutoencoderModule, IndexBatches, TrainConfig, pl

AUTOCAST = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Interleaved(pl.Callback):
    """Times blocks of ``block`` brainae steps and runs (and times) as many reference steps after each."""

    def __init__(self, warmup: int, block: int, reference_step, device: torch.device) -> None:  # noqa: ANN001
        self.warmup = warmup
        self.block = block
        self.reference_step = reference_step
        self.device = device
        self.resume: float | None = None
        self.brainae: list[float] = []
        self.reference: list[float] = []

    def on_train_start(self, trainer, pl_module) -> None:  # noqa: ANN001
        _sync(self.device)
        self.resume = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        done = trainer.global_step - self.warmup  # global_step counts finished optimizer steps
        if done <= 0:  # still warming up
            _sync(self.device)
            self.resume = time.perf_counter()
            return
        if done % self.block:
            return
        _sync(self.device)
        now = time.perf_counter()
        self.brainae.append(now - self.resume)
        for _ in range(self.block):
            self.reference_step()
        _sync(self.device)
        self.resume = time.perf_counter()
        self.reference.append(self.resume - now)


def bench_pairs(
    args: argparse.Namespace, arch: str, images: torch.Tensor, accelerator: str, device: torch.device
) -> tuple[list[float], list[float]]:
    """One fit of ``warmup + steps`` brainae steps; returns (brainae, reference) seconds per timed pair."""
    reference_step = make_reference(args, arch, images, device)
    for _ in range(args.warmup):
        reference_step()
    config = TrainConfig(
        arch=arch,
        loss="mse",
        augment=True,
        batch_size=args.batch,
        precision=args.precision,
        accelerator=accelerator,
        devices=1,
        channels_last=args.channels_last,
        compile=args.compile,
    )
    module = AutoencoderModule(config, images, None)
    timer = _Interleaved(args.warmup, args.block, reference_step, device)
    trainer = pl.Trainer(
        accelerator=accelerator,
        devices=1,
        precision=args.precision,
        max_steps=args.warmup + args.steps,
        max_epochs=-1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        use_distributed_sampler=False,
        benchmark=True,
        callbacks=[timer],
    )
    trainer.fit(module, train_dataloaders=IndexBatches(module, "train"))
    return timer.brainae, timer.reference


def make_reference(args: argparse.Namespace, arch: str, images: torch.Tensor, device: torch.device):  # noqa: ANN201
    """The plain loop's step function (its own model, optimizer and generator)."""
    torch.manual_seed(0)
    model = build_model(arch).to(device)
    memory = torch.channels_last if args.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory).train()
    net = torch.compile(model) if args.compile else model
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3, alpha=0.9, eps=1e-7)
    loss_fn = make_loss("mse")
    data = images.to(device).unsqueeze(1)
    n = data.shape[0]
    generator = torch.Generator(device=device).manual_seed(0)
    config = AugmentConfig()
    dtype = AUTOCAST.get(args.precision)
    scaler = torch.amp.GradScaler(device.type, enabled=args.precision == "16-mixed")
    torch.backends.cudnn.benchmark = True
    perm = torch.randperm(n, device=device)
    pos = 0

    def step() -> None:
        nonlocal perm, pos
        if pos + args.batch > n:
            perm, pos = torch.randperm(n, device=device), 0
        idx = perm[pos : pos + args.batch]
        pos += args.batch
        target = data[idx]
        inputs = augment(target, config, generator).contiguous(memory_format=memory)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = loss_fn(net(inputs), target)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--archs", default=",".join(architecture_names()), help="comma-separated names")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--precision", default="32", choices=("32", "bf16-mixed", "16-mixed"))
    parser.add_argument("--steps", type=int, default=None, help="timed brainae steps per fit [CPU 8, GPU 60]")
    parser.add_argument(
        "--block",
        type=int,
        default=None,
        help="steps per side of a timed pair; --steps is rounded up to a multiple [CPU 1, GPU 20]",
    )
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first [CPU 1, GPU 15]")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="fits per architecture (the pairs of all fits are pooled)",
    )
    parser.add_argument("--images", type=int, default=None, help="synthetic images on the device")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--accelerator", default="auto", choices=("auto", "cpu", "gpu"))
    args = parser.parse_args()

    use_gpu = args.accelerator == "gpu" or (args.accelerator == "auto" and torch.cuda.is_available())
    accelerator = "gpu" if use_gpu else "cpu"
    device = torch.device("cuda" if use_gpu else "cpu")
    args.steps = args.steps or (60 if use_gpu else 8)
    args.block = args.block or (20 if use_gpu else 1)
    args.steps = -(-args.steps // args.block) * args.block
    args.warmup = args.warmup if args.warmup is not None else (15 if use_gpu else 1)
    n_images = args.images or args.batch * (16 if use_gpu else 4)
    images = torch.rand(n_images, args.size, args.size, generator=torch.Generator().manual_seed(0))
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")

    name = torch.cuda.get_device_name(device) if use_gpu else f"cpu ({torch.get_num_threads()} threads)"
    results = []
    for arch in [a.strip() for a in args.archs.split(",") if a.strip()]:
        pairs: list[tuple[float, float]] = []
        per_repeat = []
        for _ in range(args.repeats):
            times = list(zip(*bench_pairs(args, arch, images, accelerator, device)))
            per_repeat.append(statistics.median(r / b for b, r in times))
            pairs += times
        brainae_s = statistics.median(b for b, _ in pairs)
        reference_s = statistics.median(r for _, r in pairs)
        results.append(
            {
                "arch": arch,
                "batch": args.batch,
                "precision": args.precision,
                "channels_last": args.channels_last,
                "compile": args.compile,
                "brainae_img_s": round(args.block * args.batch / brainae_s, 2),
                "reference_img_s": round(args.block * args.batch / reference_s, 2),
                "ratio": round(statistics.median(r / b for b, r in pairs), 3),
                "ratio_per_repeat": [round(x, 3) for x in per_repeat],
                "pairs": len(pairs),
                "pair_ratio_range": [
                    round(min(r / b for b, r in pairs), 3),
                    round(max(r / b for b, r in pairs), 3),
                ],
            }
        )
    out = {
        "device": name,
        "torch": torch.__version__,
        "size": args.size,
        "steps": args.steps,
        "warmup": args.warmup,
        "block": args.block,
        "repeats": args.repeats,
        "timing": "interleaved pairs (block reference steps after every block brainae steps); ratio = median pair ratio",
        "reference": "plain PyTorch loop, same model/optimizer/loss/precision and the same augment() call",
        "cpu_count": os.cpu_count(),
        "results": results,
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
