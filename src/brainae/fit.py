"""Training brainae's volumetric models from a folder of NIfTI volumes (``brainae fit TASK DIR``).

One recipe per task (:data:`RECIPES`): the shipped default models are trained by exactly these settings from
``../shared/data/ixi-t1-2mm`` with the volume split in ``brainae/pretrained/ixi-split.json`` (the ``test``
volumes are never read; ``val`` volumes give the validation loss and, for anomaly models, the healthy-data
calibration).

Data flow: volumes are read into RAS+ (:func:`brainae.io.load_volume`), brain masks computed once
(:func:`brainae.brainmask.brain_mask`), intensities normalised per volume (:mod:`brainae.volumetric`), and
everything is held on the training device. Each step draws a batch of random 3-D patches there
(:class:`PatchSampler`: centred near a head voxel, or a brain voxel for skull-stripped patches, voxel size in the task's range by trilinear upsampling,
flips, a mild gamma), corrupts it as the task says (:mod:`brainae.tasks`) and takes one Adam step on the
weighted MSE. The learning rate warms up for 5 % of the steps and then follows a cosine to 2 % (with
``max_seconds``, of the steps or of the time, whichever is further along). The patch choices are drawn on the
CPU and the patches cut on the training device, so a GPU does not wait on each random choice. The model runs
under bfloat16 autocast on a GPU and on a CPU with bfloat16 matrix units (Intel AMX or AVX-512 BF16: 2-3x
faster there), in float32 elsewhere; the card records which (``precision``).

A plain PyTorch loop is used rather than Lightning: a recipe is a fixed number of steps with no epochs,
early stopping or resume to manage, and the loop is what the GPU benchmark compares against anyway.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from brainae.card import Source, Training
from brainae.device import has_bf16_units
from brainae.errors import BrainaeError
from brainae.tasks import Task, get_task
from brainae.volume import VolumetricPreprocessing

__all__ = [
    "FitConfig",
    "FittedModel",
    "PatchSampler",
    "RECIPES",
    "TrainingVolume",
    "fit",
    "fit_folder",
    "load_split",
    "load_training_volumes",
    "save_fitted",
]

SPLIT_FILE = Path(__file__).resolve().parent / "pretrained" / "ixi-split.json"
INPUTS = {
    "denoise": ["image", "noise-level estimate"],
    "inpaint": ["image with its holes filled (biharmonic)", "hole mask"],
}
"""The model input channels of each task, as recorded in the checkpoint card (default: the image alone)."""


@dataclass
class FitConfig:
    """Settings of one volumetric training run (stored in the checkpoint).

    Attributes:
        task: a :data:`brainae.tasks.TASKS` name.
        steps: optimiser steps.
        batch_size: patches per step.
        patch: patch side in voxels (a multiple of the model's down-sampling factor).
        lr: peak learning rate (Adam).
        seed: seeds the model initialisation, the patch sampler and the corruptions.
        mask_method: brain masks for training (``auto``: deepbet when installed).
        val_patches: fixed validation patches drawn once from the validation volumes.
        widths: the 3-D U-Net's channels per level (None: the task's).
        max_seconds: stop training after this many seconds (None: run every step). The learning-rate
            schedule then follows whichever of the step count and the clock is further along, and the card
            records the steps actually taken (``--steps`` with that number re-runs the same schedule).
    """

    task: str
    steps: int = 1000
    batch_size: int = 4
    patch: int = 48
    lr: float = 1e-3
    seed: int = 0
    mask_method: str = "auto"
    val_patches: int = 16
    widths: tuple[int, ...] | None = None
    max_seconds: float | None = None

    def __post_init__(self) -> None:
        """Refuse settings no training can run with (a NaN or negative learning rate, zero steps...)."""
        for name, least in (("steps", 1), ("batch_size", 1), ("patch", 8), ("val_patches", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise BrainaeError(
                    f"--{name.replace('_', '-')} {value!r}: must be a whole number of at least {least}"
                )
        if not _positive(self.lr):
            raise BrainaeError(
                f"--lr {self.lr!r}: the learning rate must be a positive finite number, e.g. 1e-3"
            )
        if self.max_seconds is not None and not _positive(self.max_seconds):
            raise BrainaeError(
                f"--max-seconds {self.max_seconds!r}: must be a positive finite number of seconds"
            )
        if self.widths is not None and (
            len(self.widths) < 2 or any(isinstance(w, bool) or int(w) != w or w < 1 for w in self.widths)
        ):
            raise BrainaeError(f"--widths {self.widths!r}: give two or more positive integers, e.g. 16,32,64")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def arch_kwargs(self, task: Task) -> dict:
        """The model's constructor arguments: the task's, with ``widths`` when set."""
        kwargs = task.arch_kwargs()
        if self.widths is not None:
            kwargs["widths"] = [int(w) for w in self.widths]
        return kwargs


def _positive(value: object) -> bool:
    return (
        isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    )


RECIPES: dict[str, FitConfig] = {
    "denoise": FitConfig("denoise", steps=2000, mask_method="deepbet"),
    "inpaint": FitConfig("inpaint", steps=1600, mask_method="deepbet"),
    "anomaly": FitConfig("anomaly", steps=1000, mask_method="deepbet"),
    "plain-ae": FitConfig("plain-ae", steps=1000, mask_method="deepbet"),
}
"""The recipe of each task's shipped model (``brainae fit TASK DIR --split ixi`` with no other option)."""


@dataclass
class TrainingVolume:
    """One training volume: RAS+ float32 data, voxel sizes, brain mask, file id."""

    id: str
    data: np.ndarray
    zooms: tuple[float, float, float]
    brain: np.ndarray


def load_split(split: str | os.PathLike | None, ids: list[str], seed: int = 0) -> tuple[list[str], list[str]]:
    """(train ids, val ids) for the volume ids of a folder.

    ``split`` is ``"ixi"`` (the shipped split of the 30 shared IXI volumes), a JSON file with ``train`` and
    ``val`` lists of ids (file names without ``.nii.gz``), or None: a seeded random 15 % (at least 1) of the
    volumes for validation. Ids of the split that are not in the folder are an error; volumes of the folder
    that the split lists in neither part (e.g. its ``test`` part) are not used.
    """
    if split is None:
        if len(ids) < 2:
            raise BrainaeError(f"{len(ids)} volume(s): training needs at least 2 (one for validation)")
        rng = np.random.default_rng(seed)
        order = [ids[i] for i in rng.permutation(len(ids))]
        n_val = max(1, round(0.15 * len(ids)))
        return sorted(order[n_val:]), sorted(order[:n_val])
    path = SPLIT_FILE if str(split) == "ixi" else Path(split)
    not_split = BrainaeError(f"{path}: not a split file; it needs 'train' and 'val' lists of volume ids")
    try:
        spec = json.loads(Path(path).read_text())
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise BrainaeError(
            f"{path}: no such split file; give 'ixi' or a JSON file with train and val lists"
        ) from None
    except (ValueError, OSError):
        raise not_split from None
    if not isinstance(spec, dict) or not all(
        isinstance(spec.get(k), list) and all(isinstance(i, str) for i in spec[k]) for k in ("train", "val")
    ):
        raise not_split
    train, val = list(dict.fromkeys(spec["train"])), list(dict.fromkeys(spec["val"]))
    both = sorted(set(train) & set(val))
    if both:
        raise BrainaeError(
            f"{path}: {len(both)} volume(s) in both train and val (first: {both[0]}); a validation volume must "
            "not be trained on: list each volume once"
        )
    from brainae.io import subject_id

    subjects = sorted({subject_id(i) for i in train} & {subject_id(i) for i in val})
    if subjects:
        raise BrainaeError(
            f"{path}: subject {subjects[0]} has volumes in both train and val ({len(subjects)} such subject(s)); "
            "put all of a subject's volumes on one side"
        )
    missing = sorted(set(train + val) - set(ids))
    if missing:
        raise BrainaeError(
            f"split {path.name}: {len(missing)} listed volume(s) are not in the folder (first: {missing[0]}); "
            "give the folder the split was made for"
        )
    if not train or not val:
        raise BrainaeError(f"split {path.name}: needs at least one train and one val volume")
    return train, val


def load_training_volumes(
    files: list[Path],
    *,
    mask_method: str = "auto",
    masks: str | os.PathLike | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[TrainingVolume]:
    """Read volumes into RAS+ with their brain masks.

    Masks come from ``masks`` (a folder of mask NIfTIs with the volumes' file names, on their grids) when
    given, else are computed with :func:`brainae.brainmask.brain_mask` (``mask_method``).
    """
    from brainae.brainmask import brain_mask
    from brainae.io import check_same_grid, load_volume

    out = []
    for i, f in enumerate(files):
        vol = load_volume(f)
        if masks is not None:
            mvol = load_volume(Path(masks) / f.name)
            check_same_grid(mvol, vol, "mask")
            mask = mvol.data > 0
        else:
            mask = brain_mask(vol.data, vol.zooms, method=mask_method)
        out.append(TrainingVolume(vol.id, vol.data, vol.zooms, mask))
        if progress:
            progress(f"read {i + 1}/{len(files)}: {vol.id} ({int(mask.sum())} brain voxels)")
    return out


class PatchSampler:
    """Random training patches drawn on the training device (see module doc).

    Holds, per volume, the head image and / or the skull-stripped image (each normalised as the task says)
    and the brain mask, as tensors on ``device``.
    """

    def __init__(self, volumes: list[TrainingVolume], task: Task, patch: int, device) -> None:
        import torch

        from brainae.volumetric import fit_intensity

        self.task = task
        self.patch = int(patch)
        self.device = device
        self.items = []
        for v in volumes:
            entry = {"zooms": v.zooms, "brain": torch.from_numpy(v.brain).to(device)}
            if task.stripped < 1:
                entry["head"] = torch.from_numpy(fit_intensity(v.data).forward(v.data)).to(device)
            if task.stripped > 0:
                stripped = np.where(v.brain, v.data, v.data.min()).astype(np.float32)
                norm = fit_intensity(stripped, reference=task.reference, brain=v.brain)
                entry["stripped"] = torch.from_numpy(norm.forward(stripped)).to(device)
            head = v.data > 0.05 * np.percentile(v.data, 99.5)
            for key, region in (("brain_centres", v.brain), ("head_centres", head)):
                idx = np.argwhere(region)
                entry[key] = idx if len(idx) else np.argwhere(np.ones_like(region))
            self.items.append(entry)

    def sample(self, n: int, generator):
        """(clean N x 1 x P^3, brain N x 1 x P^3 bool, voxel_mm (n,)) patches.

        The random choices are drawn from ``generator`` on its own device: a CPU generator keeps a GPU
        from waiting on each of them (the patches themselves are cut and resampled on ``self.device``).
        """
        import torch

        dev = self.device
        gdev = generator.device
        t = self.task
        p = self.patch
        clean = torch.empty((n, 1, p, p, p), device=dev)
        brain = torch.empty((n, 1, p, p, p), device=dev, dtype=torch.bool)
        voxel = torch.empty(n, device=dev)

        def rand() -> float:
            return float(torch.rand(1, generator=generator, device=gdev))

        def randint(k: int) -> int:
            return int(torch.randint(k, (1,), generator=generator, device=gdev))

        for i in range(n):
            item = self.items[randint(len(self.items))]
            key = (
                "stripped" if ("head" not in item or ("stripped" in item and rand() < t.stripped)) else "head"
            )
            img, mask = item[key], item["brain"]
            zoom = np.asarray(item["zooms"], dtype=float)
            if rand() < t.native_fraction:
                v_mm = float(zoom.mean())
                side = [min(s, p) for s in img.shape]
            else:
                v_mm = t.voxel_mm[0] + rand() * (t.voxel_mm[1] - t.voxel_mm[0])
                side = [min(s, max(2, math.ceil(p * v_mm / z))) for s, z in zip(img.shape, zoom)]
            centres = item["brain_centres" if key == "stripped" else "head_centres"]
            cidx = centres[randint(len(centres))]
            starts = []
            for a in range(3):
                jitter = int((rand() - 0.5) * side[a] * 0.6)
                s0 = int(cidx[a]) - side[a] // 2 + jitter
                starts.append(min(max(0, s0), img.shape[a] - side[a]))
            sl = tuple(slice(s, s + w) for s, w in zip(starts, side))
            crop = img[sl][None, None].float()
            mcrop = mask[sl][None, None].float()
            if tuple(crop.shape[2:]) != (p, p, p):
                crop = torch.nn.functional.interpolate(
                    crop, size=(p, p, p), mode="trilinear", align_corners=True
                )
                mcrop = torch.nn.functional.interpolate(
                    mcrop, size=(p, p, p), mode="trilinear", align_corners=True
                )
            for axis in t.flips:
                if rand() < 0.5:
                    crop = crop.flip(2 + axis)
                    mcrop = mcrop.flip(2 + axis)
            gamma = math.exp((rand() - 0.5) * 2 * math.log(1.2))
            clean[i] = crop[0].clamp(min=0) ** gamma
            brain[i] = mcrop[0] > 0.5
            voxel[i] = v_mm
        return clean, brain, voxel


@dataclass
class FitResult:
    """What :func:`fit` returns: the trained model, its loss history and the run's facts."""

    model: object
    history: list[dict] = field(default_factory=list)
    val_loss: float = float("nan")
    seconds: float = 0.0
    device: str = "cpu"
    steps: int = 0
    precision: str = "float32"


def _weighted_mse(pred, target, weight):
    return ((pred - target) ** 2 * weight).sum() / weight.sum().clamp(min=1e-8)


def fit(
    train: list[TrainingVolume],
    val: list[TrainingVolume],
    config: FitConfig,
    *,
    device: str | object = "auto",
    progress: Callable[[int, int, float], None] | None = None,
    log_every: int = 50,
) -> FitResult:
    """Train a fresh :class:`~brainae.models.unet3d.UNet3d` for ``config.task``; returns a :class:`FitResult`."""
    import torch

    from brainae.device import resolve_device
    from brainae.models import build_model

    task = get_task(config.task)
    dev = resolve_device(device)
    torch.manual_seed(config.seed)
    model = build_model("unet3d", **config.arch_kwargs(task)).to(dev, memory_format=torch.channels_last_3d)
    factor = model.factor
    if config.patch % factor:
        raise BrainaeError(f"--patch {config.patch}: must be a multiple of {factor} for task {task.name}")
    # patch choices from a CPU generator (no GPU round trip per choice), corruptions on the device
    pick, gen = torch.Generator(), torch.Generator(device=dev)
    pick.manual_seed(config.seed)
    gen.manual_seed(config.seed)
    sampler = PatchSampler(train, task, config.patch, dev)
    val_pick, val_gen = torch.Generator(), torch.Generator(device=dev)
    val_pick.manual_seed(config.seed + 1)
    val_gen.manual_seed(config.seed + 1)
    val_batches = []
    if val:
        vs = PatchSampler(val, task, config.patch, dev)
        for _ in range(max(1, config.val_patches // config.batch_size)):
            clean, brain, vox = vs.sample(config.batch_size, val_pick)
            val_batches.append(task.make_batch(clean, brain, vox, val_gen))
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    warm = 0.05

    def lr_factor(done: float) -> float:
        """Linear warm-up over the first 5 % of training, then a cosine to 2 % (``done`` in [0, 1])."""
        if done < warm:
            return min(1.0, done / warm + 1e-3)
        t = min(1.0, (done - warm) / (1 - warm))
        return 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * t))

    amp = has_bf16_units(dev)
    history: list[dict] = []
    running = torch.zeros((), device=dev)
    start = time.perf_counter()
    model.train()
    steps_done = 0
    for step in range(config.steps):
        elapsed = time.perf_counter() - start
        done = step / config.steps
        if config.max_seconds:
            if elapsed >= config.max_seconds:
                break
            done = max(done, elapsed / config.max_seconds)
        for group in opt.param_groups:
            group["lr"] = config.lr * lr_factor(done)
        clean, brain, vox = sampler.sample(config.batch_size, pick)
        x, target, weight = task.make_batch(clean, brain, vox, gen)
        x = x.contiguous(memory_format=torch.channels_last_3d)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
            pred = model(x)
        loss = _weighted_mse(pred.float(), target, weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        running += loss.detach()
        steps_done = step + 1
        if steps_done % log_every == 0 or steps_done == config.steps:
            k = (step % log_every) + 1
            mean_loss = float(running) / k  # one device sync per log line
            if not math.isfinite(mean_loss):
                raise BrainaeError(f"training diverged by step {steps_done} (loss {mean_loss}); lower --lr")
            history.append({"step": steps_done, "loss": mean_loss, "seconds": time.perf_counter() - start})
            if progress:
                progress(steps_done, config.steps, mean_loss)
            running.zero_()
    if steps_done % log_every and steps_done != config.steps:  # stopped by the clock between log lines
        mean_loss = float(running) / (steps_done % log_every)
        history.append({"step": steps_done, "loss": mean_loss, "seconds": time.perf_counter() - start})
    val_loss = _evaluate(model, val_batches, amp, dev)
    model.eval()
    precision = "bfloat16 autocast" if amp else "float32"
    return FitResult(model, history, val_loss, time.perf_counter() - start, str(dev), steps_done, precision)


def _evaluate(model, batches, amp: bool, dev) -> float:
    import torch

    if not batches:
        return float("nan")
    model.eval()
    total = 0.0
    with torch.inference_mode():
        for x, target, weight in batches:
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
                pred = model(x)
            total += float(_weighted_mse(pred.float(), target, weight))
    model.train()
    return total / len(batches)


@dataclass
class FittedModel:
    """A trained volumetric model and its card, not yet calibrated or written (see :func:`fit_folder`).

    Attributes:
        task: the task it was trained for.
        result: the training result (model, history, losses, device).
        preprocessing, training, source: the card's parts.
        val: the validation volumes (for the calibration step, :func:`brainae.infer.calibrate_fitted`).
        summary: steps, seconds, final losses, device (what ``brainae fit`` prints).
    """

    task: Task
    result: FitResult
    preprocessing: VolumetricPreprocessing
    training: Training
    source: Source
    val: list
    summary: dict
    arch_kwargs: dict = field(default_factory=dict)


def fit_folder(
    data: str | os.PathLike,
    config: FitConfig,
    *,
    split: str | os.PathLike | None = "ixi",
    masks: str | os.PathLike | None = None,
    device: str | object = "auto",
    log: Callable[[str], None] | None = None,
) -> FittedModel:
    """Train ``config.task`` on a folder of NIfTI volumes; returns the model and its card.

    The card records the task and how inputs are prepared (``preprocessing``), the recipe, the volumes used
    and the loss history (``training``) and the data source (``source``). Training ends here: the
    calibration on the validation volumes (a denoiser's blend table, an anomaly model's healthy-data
    statistics) runs the trained model, which is inference, so it is the next step,
    :func:`brainae.infer.calibrate_fitted`; :func:`save_fitted` then writes the checkpoint. ``brainae fit``
    runs the three.
    """
    say = log or (lambda _msg: None)
    task = get_task(config.task)
    from brainae.io import list_niftis, volume_id

    files = list_niftis(Path(data))
    by_id = {volume_id(f): f for f in files}
    train_ids, val_ids = load_split(split, sorted(by_id), config.seed)
    say(f"{task.name}: {len(train_ids)} training and {len(val_ids)} validation volumes from {data}")
    train = load_training_volumes(
        [by_id[i] for i in train_ids], mask_method=config.mask_method, masks=masks, progress=say
    )
    val = load_training_volumes(
        [by_id[i] for i in val_ids], mask_method=config.mask_method, masks=masks, progress=say
    )

    def step_log(step: int, total: int, loss: float) -> None:
        say(f"step {step}/{total}: loss {loss:.6f}")

    result = fit(train, val, config, device=device, progress=step_log)
    say(f"done in {result.seconds:.0f} s on {result.device}: validation loss {result.val_loss:.6f}")
    preprocessing, training, source = _card(task, config, data, split, train_ids, val_ids, result)
    summary = {
        "steps": result.steps,
        "seconds": result.seconds,
        "val_loss": result.val_loss,
        "final_loss": result.history[-1]["loss"] if result.history else None,
        "device": result.device,
    }
    return FittedModel(task, result, preprocessing, training, source, val, summary, config.arch_kwargs(task))


def save_fitted(out: str | os.PathLike, fitted: FittedModel, normative: dict | None = None) -> dict:
    """Write the fitted model as one self-describing checkpoint; returns its summary with ``out`` added."""
    from brainae.checkpoint import save_checkpoint

    path = save_checkpoint(
        out,
        fitted.result.model.float(),
        arch="unet3d",
        arch_kwargs=fitted.arch_kwargs or fitted.task.arch_kwargs(),
        preprocessing=fitted.preprocessing,
        training=fitted.training,
        normative=normative,
        source=fitted.source,
    )
    return {"out": str(path), **fitted.summary}


def _card(
    task: Task, config: FitConfig, data: Any, split: Any, train_ids: list, val_ids: list, result: FitResult
) -> tuple[VolumetricPreprocessing, Training, Source]:
    """The trained model's card before calibration: how inputs are prepared, the training record, the source."""
    preprocessing = VolumetricPreprocessing(
        task=task.name,
        grid_mm=task.grid_mm,
        voxel_mm=tuple(task.voxel_mm),
        reference=task.reference,
        skull_stripped=task.stripped >= 1,
        inputs=tuple(INPUTS.get(task.name, ["image"])),
        fill=task.fill,
    )
    training = Training(
        recipe=config.to_dict(),
        record={
            "split": str(split) if split is not None else "random 15 % validation",
            "train_ids": train_ids,
            "val_ids": val_ids,
            "history": result.history,
            "val_loss": result.val_loss,
            "seconds": result.seconds,
            "steps_done": result.steps,
            "device": result.device,
            "precision": result.precision,
        },
        nested=True,
    )
    source = Source(
        license="MIT (weights trained by brainae)",
        details={
            "trained_by": f"brainae fit {task.name}",
            "data": f"{len(train_ids)} volumes of {Path(data).name}",
            "data_credit": "IXI dataset (CC BY-SA 3.0)"
            if any(i.startswith("IXI") for i in train_ids)
            else None,
        },
    )
    return preprocessing, training, source
