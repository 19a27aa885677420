"""Training throughput: brainae's real training step vs a minimal plain-PyTorch loop, in one run.

brainae side: ``lightning.Trainer.fit`` on :class:`brainae.train.AutoencoderModule` (data held on the device,
batches drawn there by index from a per-epoch permutation, inputs corrupted there with
``brainae.corrupt.augment``), timed from the end of the warm-up steps to the end of training (CUDA
synchronised). Reference side: the same model, batch, precision (``torch.autocast`` + GradScaler for fp16),
RMSprop settings, loss and the SAME ``augment`` call, as a bare loop over synthetic data on the device.
Both use synthetic 128 x 128 images and the thesis's MSE loss.

Prints ONE JSON object: ``{"device": ..., "results": [{"arch", "batch", "precision", "brainae_img_s",
"reference_img_s", "ratio", "ratio_per_repeat"}, ...]}`` (ratio = brainae / reference, medians over
``--repeats`` alternated measurements; the quality bar is >= 0.8).

    python benchmarks/train_throughput.py                                   # CPU: five archs, batch 32, fp32
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


class _Timer(pl.Callback):
    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.t0: float | None = None
        self.t1: float | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: ANN001
        if self.t0 is None and trainer.global_step == self.warmup:
            _sync(pl_module.device)
            self.t0 = time.perf_counter()

    def on_train_end(self, trainer, pl_module) -> None:  # noqa: ANN001
        _sync(pl_module.device)
        self.t1 = time.perf_counter()


def bench_brainae(args: argparse.Namespace, arch: str, images: torch.Tensor, accelerator: str) -> float:
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
    timer = _Timer(args.warmup)
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
    return args.steps * args.batch / (timer.t1 - timer.t0)


def bench_reference(args: argparse.Namespace, arch: str, images: torch.Tensor, device: torch.device) -> float:
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

    for _ in range(args.warmup):
        step()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    _sync(device)
    return args.steps * args.batch / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--archs", default=",".join(architecture_names()), help="comma-separated names")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--precision", default="32", choices=("32", "bf16-mixed", "16-mixed"))
    parser.add_argument("--steps", type=int, default=None, help="timed steps [CPU 3, GPU 60]")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first [CPU 1, GPU 15]")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="alternated reference / brainae measurements (medians reported)",
    )
    parser.add_argument("--images", type=int, default=None, help="synthetic images on the device")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--accelerator", default="auto", choices=("auto", "cpu", "gpu"))
    args = parser.parse_args()

    use_gpu = args.accelerator == "gpu" or (args.accelerator == "auto" and torch.cuda.is_available())
    accelerator = "gpu" if use_gpu else "cpu"
    device = torch.device("cuda" if use_gpu else "cpu")
    args.steps = args.steps or (60 if use_gpu else 3)
    args.warmup = args.warmup if args.warmup is not None else (15 if use_gpu else 1)
    n_images = args.images or args.batch * (16 if use_gpu else 4)
    images = torch.rand(n_images, args.size, args.size, generator=torch.Generator().manual_seed(0))
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")

    name = torch.cuda.get_device_name(device) if use_gpu else f"cpu ({torch.get_num_threads()} threads)"
    results = []
    for arch in [a.strip() for a in args.archs.split(",") if a.strip()]:
        pairs = []
        for _ in range(args.repeats):  # alternated, so that a change of load hits both sides alike
            reference = bench_reference(args, arch, images, device)
            pairs.append((bench_brainae(args, arch, images, accelerator), reference))
        brainae = statistics.median(b for b, _ in pairs)
        reference = statistics.median(r for _, r in pairs)
        results.append(
            {
                "arch": arch,
                "batch": args.batch,
                "precision": args.precision,
                "channels_last": args.channels_last,
                "compile": args.compile,
                "brainae_img_s": round(brainae, 2),
                "reference_img_s": round(reference, 2),
                "ratio": round(brainae / reference, 3),
                "ratio_per_repeat": [round(b / r, 3) for b, r in pairs],
            }
        )
    out = {
        "device": name,
        "torch": torch.__version__,
        "size": args.size,
        "steps": args.steps,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "reference": "plain PyTorch loop, same model/optimizer/loss/precision and the same augment() call",
        "cpu_count": os.cpu_count(),
        "results": results,
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
