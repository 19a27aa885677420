"""What ``train`` and ``grid`` share: their options (defined once), the config they build, the progress display.

The display renders :class:`brainae.train.TrainProgress` events: a progress bar with the time left on a
terminal, one line per epoch always, and on a log (not a terminal) a line every :data:`LOG_EVERY_S` seconds
within long epochs. Epochs are counted from 1, as in ``metrics.csv``.
"""

from __future__ import annotations

import re
import time
from typing import Annotated, Any

import typer

from brainae.cli._app import console, err_console

LOG_EVERY_S = 10.0

# ---- options shared by train and grid (one definition each)

Epochs = Annotated[
    int,
    typer.Option(min=1, help="Maximum number of epochs; with --resume, the new total.", show_default=True),
]
BatchSize = Annotated[int, typer.Option(min=1, help="Images per step, per device.", show_default=True)]
Precision = Annotated[str, typer.Option(help="32, bf16-mixed or 16-mixed.", show_default=True)]
Accelerator = Annotated[str, typer.Option(help="auto, cpu or gpu (Lightning's names).", show_default=True)]
Devices = Annotated[str, typer.Option(help="Devices per node: a number or auto.", show_default=True)]
NumNodes = Annotated[int, typer.Option(min=1, help="Nodes for multi-node DDP.", show_default=True)]
Strategy = Annotated[
    str,
    typer.Option(help="Lightning strategy: auto (DDP for more than one device), ddp, ...", show_default=True),
]
Seed = Annotated[int, typer.Option(help="Seeds weights, batch order and augmentation.", show_default=True)]
LatentChannels = Annotated[
    int | None,
    typer.Option(help="Latent feature maps; leave out for the thesis's 128 (fewer makes a real bottleneck)."),
]
MaxSteps = Annotated[
    int | None, typer.Option(help="Cap the steps of an epoch; leave out for the whole split.")
]
ChannelsLast = Annotated[
    bool, typer.Option("--channels-last", help="Channels-last memory format (GPU, mixed precision).")
]
Compile = Annotated[bool, typer.Option("--compile", help="Run the model through torch.compile.")]
BnMomentum = Annotated[
    float | None,
    typer.Option(
        help="Batch-norm momentum (torch terms); leave out to choose it from the run's length: the thesis's "
        "0.01 from 300 steps on, up to 0.1 for shorter runs."
    ),
]
Data = Annotated[
    str,
    typer.Option(
        help="Where batches come from: memory (the split on the device), stream (read from slices.npy batch "
        "by batch), or auto: memory when train + val fit in --memory-limit (or half the free memory).",
        show_default=True,
    ),
]
MemoryLimit = Annotated[
    str | None,
    typer.Option(help="Memory the training data may take on the device, e.g. 8G or 500M (for --data auto)."),
]
Progress = Annotated[
    bool, typer.Option("--progress/--no-progress", help="Show a progress bar and periodic progress lines.")
]

CONFIG_OPTIONS = (
    "epochs",
    "batch_size",
    "precision",
    "accelerator",
    "devices",
    "num_nodes",
    "strategy",
    "seed",
    "latent_channels",
    "max_steps_per_epoch",
    "channels_last",
    "compile",
    "bn_momentum",
    "data",
    "memory_limit",
)
"""The command options that are :class:`~brainae.train.TrainConfig` fields of the same name."""


def parse_bytes(text: str | None) -> int | None:
    """``"8G"``, ``"500M"``, ``"1.5GB"``, ``"1000000"`` -> bytes (binary units); None stays None."""
    from brainae.errors import BrainaeError

    if text is None:
        return None
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)i?b?\s*", text.lower())
    if m is None:
        raise BrainaeError(f"--memory-limit {text!r}: write a size such as 8G, 500M or 1000000 (bytes)")
    return int(float(m[1]) * 1024 ** " kmgt".index(m[2] or " "))


def config_values(values: dict[str, Any]) -> dict[str, Any]:
    """The TrainConfig fields from the shared options' values (devices and memory limit parsed)."""
    out = {k: values[k] for k in CONFIG_OPTIONS if k in values}
    if "devices" in out:
        dev = str(out["devices"]).strip()
        out["devices"] = int(dev) if dev.isdigit() else dev
    if "memory_limit" in out:
        out["memory_limit"] = parse_bytes(out["memory_limit"])
    return out


def given_on_command_line(ctx: typer.Context, names: tuple[str, ...] | list[str]) -> list[str]:
    """The parameters among ``names`` that the user gave (not left at their defaults)."""
    given = []
    for name in names:
        source = ctx.get_parameter_source(name)
        if source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP"):
            given.append(name)
    return given


def quiet_lightning() -> None:
    """Lightning's informational lines off for this command's process: "GPU available: False, used: False",
    "TPU available ...", its advertisements ("Tip: ... litlogger"), "`Trainer.fit` stopped: ...". Its warnings
    still show (as ``warning:`` lines). Lightning sets its loggers to INFO when first imported, so it is
    imported here first: levels set before that import would be undone by it (the demo's banner, issue 28)."""
    import logging

    import lightning.fabric  # noqa: F401 - see above
    import lightning.pytorch  # noqa: F401

    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)


def normative_device(accelerator: str) -> str:
    """The device of the normative-statistics step for a training accelerator name."""
    return "cpu" if accelerator == "cpu" else "auto"


# ---- the display


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class TrainDisplay:
    """Renders training progress events (see the module doc); one instance can follow several runs."""

    def __init__(self, show_progress: bool = True) -> None:
        self.show_progress = show_progress
        self.live = show_progress and err_console.is_terminal
        self._bar: Any = None
        self._task: Any = None
        self._epoch_t0 = self._last_line = time.monotonic()
        self._epoch_seconds: list[float] = []

    def __call__(self, ev: Any) -> None:
        getattr(self, f"_on_{ev.kind}")(ev)

    def _print(self, text: str) -> None:
        (self._bar.console if self._bar is not None else console).print(text, markup=False, soft_wrap=True)

    def _on_start(self, ev: Any) -> None:
        from brainae.train.module import SHORT_RUN_STEPS

        info = ev.info
        self._epoch_seconds = []
        self._epoch_t0 = self._last_line = time.monotonic()
        where = "held in memory" if info.get("data_mode") == "memory" else "streamed from slices.npy"
        self._print(f"data        {where}: {info.get('data_reason', '')}")
        total = ev.epochs * ev.steps
        self._print(
            f"schedule    epochs {ev.first_epoch}-{ev.epochs} (at most; early stopping may end sooner) x "
            f"{ev.steps} steps, batch-norm momentum {info.get('bn_momentum')}"
            + (", statistics re-estimated before each validation" if info.get("bn_recalibrated") else "")
        )
        if info.get("init"):
            self._print(f"start       from the weights of {info['init']} (fine-tuning)")
        elif total < SHORT_RUN_STEPS:
            self._print(
                f"note        {total} steps in all: a short run that shows the machinery. Expect a blurry "
                "model far below the thesis's (up to 100 epochs of the full IXI): e.g. 4 epochs of the embedded "
                "sample at 128 x 128 reach 24 dB val PSNR (docs/reference.md, training). To adapt a trained model in a "
                "short run, start from it: --init CKPT --lr 1e-4."
            )
        if self.live:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("steps, epoch ends in"),
                TimeRemainingColumn(),
                console=err_console,
                transient=True,
            )
            self._bar.start()
            self._task = self._bar.add_task(f"epoch {ev.epoch}/{ev.epochs}", total=ev.steps)

    def _on_step(self, ev: Any) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=ev.step, description=f"epoch {ev.epoch}/{ev.epochs}")
            return
        now = time.monotonic()
        if not self.show_progress or now - self._last_line < LOG_EVERY_S or ev.step >= ev.steps:
            return
        self._last_line = now
        left = (now - self._epoch_t0) / ev.step * (ev.steps - ev.step)
        self._print(
            f"epoch {ev.epoch}/{ev.epochs}: step {ev.step}/{ev.steps}, epoch ends in ~{_duration(left)}"
        )

    def _on_epoch(self, ev: Any) -> None:
        r = ev.record
        self._epoch_seconds.append(float(r["seconds"]))
        per_epoch = sum(self._epoch_seconds) / len(self._epoch_seconds)
        left = (ev.epochs - ev.epoch) * per_epoch
        eta = f", at most ~{_duration(left)} left" if ev.epoch < ev.epochs else ""
        self._print(
            f"epoch {ev.epoch}/{ev.epochs}  train_loss {r['train_loss']:.4g}  val_loss {r['val_loss']:.4g}  "
            f"PSNR {r['val_psnr']:.2f} dB  ({r['seconds']:.0f} s, {r['img_s']:.0f} img/s{eta})"
        )
        self._epoch_t0 = self._last_line = time.monotonic()
        if self._bar is not None:
            self._bar.reset(self._task, total=ev.steps, description=f"epoch {ev.epoch + 1}/{ev.epochs}")

    def _on_end(self, ev: Any) -> None:
        self.close()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


def print_best(rows: list[dict[str, float]]) -> None:
    """The ``best`` line of a finished run: its best epoch (counted from 1) of the epochs it ran."""
    from brainae.train import best_row

    top = best_row(rows)
    if top is None:
        return
    console.print(
        f"best        epoch {top['epoch']} of {rows[-1]['epoch']}: val_loss {top['val_loss']:.4g}, "
        f"MSE {top['val_mse']:.4g}, DSSIM {top['val_dssim']:.4g}, PSNR {top['val_psnr']:.2f} dB",
        markup=False,
        soft_wrap=True,
    )
