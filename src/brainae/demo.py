"""The main job on the embedded IXI sample: prepare, train briefly, evaluate, report, denoise a held-out volume.

Steps (all outputs under ``out``):

1. ``inspect/`` (:func:`brainae.prepare.write_inspect`) and ``dataset/``: :func:`brainae.prepare.prepare` on
   the 8 embedded IXI volumes (``brainae/sample``) with their ages and sexes, brain-mask selection with the
   threshold brain mask (fast, no optional package), 128 x 128, split 5 / 2 / 1 volumes (train / val / test)
   so that the normative statistics have two validation volumes;
2. ``demo-res-unet-mse-N-epochs/``: :func:`brainae.train.fit` of a Residual U-Net with the thesis's settings
   (MSE, augmentation) for a few epochs on the CPU, **fine-tuned** from the thesis's trained Residual U-Net
   (``--init``, RMSprop lr 1e-4) on the sample's 5 training volumes. A few epochs from a random start (``fine_tune
   =False``, ``brainae demo --from-scratch``) show the machinery only: measured 22.9 dB on ``noise-0.04``, below
   the noisy input's 28.8 dB, while the fine-tuned model scored 31.8 dB (above the noisy input, the thesis model's
   29.6 dB and non-local means' 31.3 dB; 2026-11-26, this repository's 2-core machine);
3. ``eval/``: :func:`brainae.evaluate.evaluate` of that model and of the thesis's own trained Residual U-Net
   (shipped in ``brainae/pretrained``) on the test volume, clean and corrupted inputs, with the identity,
   non-local-means and biharmonic baselines; ``stats/`` the paired tests;
4. ``report.html``: one self-contained report of all of the above;
5. ``denoise/``: a held-out (test) volume with Gaussian noise of sd 4 % of its maximum added (``noisy.nii.gz``),
   denoised by brainae's default volumetric denoiser (``denoised.nii.gz``, what ``brainae denoise`` gives) and
   by the thesis model (``denoised_thesis.nii.gz``), on the input's grid; PSNR of both against the clean
   volume (peak: its maximum; over the voxels the thesis model processed) in the summary.

``quick=True`` (used by the tests) shrinks everything: 5 volumes, 32 x 32 slices, one short epoch of the
skip-connection CAE, no shipped model (it expects 128 x 128).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from brainae.errors import BrainaeError, BrainaeWarning


@dataclass
class DemoResult:
    """Where the demo's outputs are and what it measured."""

    out: Path
    report: Path
    noisy: Path
    denoised: Path
    seconds: float
    facts: dict = field(default_factory=dict)


Track = Callable[..., Iterator]


def _no_track(iterable: Iterable, description: str = "", total: int | None = None) -> Iterator:
    """The default ``track``: no progress shown."""
    yield from iterable


def _quiet(message: str) -> None:
    """The default ``log``: library code does not print."""


def run_demo(
    out: str | Path = "brainae-demo",
    *,
    epochs: int = 4,
    fine_tune: bool = True,
    lr: float = 1e-4,
    quick: bool = False,
    force: bool = False,
    device: str = "auto",
    progress: Callable[..., None] | None = None,
    log: Callable[[str], None] = _quiet,
    track: Track = _no_track,
) -> DemoResult:
    """Run the whole pipeline on the embedded sample; see the module doc.

    Args:
        out: the demo folder (replaced when it is an earlier demo folder).
        epochs: training epochs of the short run.
        fine_tune: start from the thesis's trained Residual U-Net's weights (else from a random initialisation).
        lr: RMSprop's learning rate when fine-tuning (from a random start: the thesis's 1e-3).
        quick: the tiny install check (see the module doc).
        force: kept for compatibility; changes nothing.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        progress: a callable that receives the training step's :class:`brainae.train.TrainProgress` events
            (the CLI passes its display); None keeps the training silent.
        log: called with one line as each step starts (the CLI prints it; default: nothing).
        track: wraps the long loops (inspect, prepare, evaluate, report) as ``track(iterable, description, total)``,
            e.g. a progress bar; default: no progress.

    Raises:
        BrainaeError: ``out`` exists and is not an earlier demo folder (``force`` does not change that: a
            folder that brainae did not write is never replaced).
    """
    from brainae.pretrained import THESIS_RES_UNET
    from brainae.report import build_report

    start = time.perf_counter()
    out = Path(out)
    _fresh_demo_folder(out, force)
    facts: dict = {}

    facts.update(_prepare_step(out, quick, log, track))  # 1. prepare
    start_from = THESIS_RES_UNET if fine_tune and not quick else None
    run_dir, best = _train_step(out, epochs, quick, device, progress, log, start_from, lr)  # 2. train
    _evaluate_step(out, best, quick, device, log, track)  # 3. evaluate + stats

    # 4. report
    report = out / "report.html"
    log(f"4/5 report -> {report}")
    build_report(
        [out / "inspect", out / "dataset", run_dir, out / "eval", out / "stats"],
        report,
        title="brainae demo: IXI sample",
        track=track,
    )

    # 5. denoise a held-out volume
    noisy_path, denoised_path, facts["denoise"] = _denoise_step(out, best, quick, device, log)

    import pandas as pd

    summary = pd.read_csv(out / "eval" / "summary.csv")
    facts["evaluation"] = summary.to_dict(orient="records")
    seconds = time.perf_counter() - start
    (out / "demo.json").write_text(
        json.dumps({"seconds": seconds, "quick": quick, **facts}, indent=2, default=str)
    )
    return DemoResult(out, report, noisy_path, denoised_path, seconds, facts)


def _fresh_demo_folder(out: Path, force: bool) -> None:
    """Empty ``out`` when it is an earlier demo folder (refuse any other folder) and mark it as a demo's."""
    from brainae.io import read_marker, write_marker

    ours = (out / "demo.json").exists() or (read_marker(out) or {}).get("kind") == "demo"
    if out.exists() and not out.is_dir():
        raise BrainaeError(f"{out}: is a file; choose a folder for --out")
    if out.exists() and any(out.iterdir()) and not ours:
        raise BrainaeError(
            f"{out}: exists and is not a brainae demo folder; brainae replaces only a demo folder it wrote"
            + (" (--force does not change that)" if force else "")
            + ", so choose another --out or move the folder away yourself"
        )
    if out.exists() and ours:
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    write_marker(out, "demo")  # at once, so that a killed demo is recognised (and replaced) by the next one


def _prepare_step(out: Path, quick: bool, log: Callable[[str], None], track: Track) -> dict:
    """Step 1: ``out/dataset`` and ``out/inspect`` from the embedded sample; returns the facts it measured."""
    from brainae.prepare import PrepareConfig, prepare, write_inspect
    from brainae.sample import PARTICIPANTS, SAMPLE_DIR, sample_files

    files = sample_files()
    with tempfile.TemporaryDirectory() as tmp:
        source = SAMPLE_DIR
        if quick:
            source = Path(tmp) / "sample"
            source.mkdir()
            for f in files[:5]:
                shutil.copy(f, source / f.name)
        size = 32 if quick else 128
        log(
            f"1/5 prepare: {len(list(source.glob('*.nii.gz')))} IXI volumes from {SAMPLE_DIR} -> {out / 'dataset'}"
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", BrainaeWarning)
            prep = prepare(
                source,
                out / "dataset",
                PrepareConfig.from_options(
                    size=size,
                    mask_method="threshold",
                    demographics=str(PARTICIPANTS),
                    seed=0,
                    val=0.25,
                    test=0.15,
                ),
                force=True,
                track=track,
            )
        write_inspect(source, out / "inspect", track=track)  # what the report's Data section shows first
    return {"slices": prep.n_slices, "splits": prep.splits}


def _train_step(
    out: Path,
    epochs: int,
    quick: bool,
    device: str,
    progress: Callable[..., None] | None,
    log: Callable[[str], None],
    start_from: Path | None,
    lr: float,
) -> tuple[Path, Path]:
    """Step 2: the short training run and its normative statistics; returns its run folder and best checkpoint.

    ``start_from``: the checkpoint it is fine-tuned from (with RMSprop's learning rate ``lr``), or None for a
    random start (with the thesis's 1e-3)."""
    from brainae.slice_anomaly import store_normative_statistics
    from brainae.train import TrainConfig, fit

    arch = "skip-cae" if quick else "res-unet"
    config = TrainConfig(
        arch=arch,
        loss="mse",
        augment=True,
        epochs=1 if quick else epochs,
        batch_size=32,
        seed=0,
        accelerator="cpu" if device == "cpu" else "auto",
        max_steps_per_epoch=2 if quick else None,
        init=None if start_from is None else str(start_from),
        lr=1e-3 if start_from is None else lr,
    )
    # named after what it is, so that tables and the report say which model is the demo's short run
    run_dir = out / f"demo-{arch}-mse-{config.epochs}-epoch{'s' if config.epochs != 1 else ''}"
    start = (
        f"fine-tuned from {start_from.name}, lr {config.lr:g}"
        if start_from is not None
        else "from a random start"
    )
    log(f"2/5 train: {arch}, MSE, augmentation, {start}, epochs 1-{config.epochs} -> {run_dir}")
    best = fit(out / "dataset", run_dir, config, progress, force=True)
    store_normative_statistics(run_dir, out / "dataset", device)
    return run_dir, best


def _evaluate_step(
    out: Path, best: Path, quick: bool, device: str, log: Callable[[str], None], track: Track
) -> None:
    """Step 3: ``out/eval`` (the run's model, the thesis's model, the baselines) and ``out/stats``."""
    from brainae.evaluate import evaluate
    from brainae.pretrained import THESIS_RES_UNET
    from brainae.stats import run_stats

    checkpoints = [best] if quick else [best, THESIS_RES_UNET]
    conditions = (
        ["clean", "noise-0.04", "blank-20"]
        if quick
        else ["clean", "noise-0.02", "noise-0.04", "blank-20", "rician-0.04"]
    )
    log(
        f"3/5 evaluate: {len(checkpoints)} model(s) + baselines, conditions {', '.join(conditions)} -> {out / 'eval'}"
    )
    evaluate(
        checkpoints,
        out / "dataset",
        out / "eval",
        split="test",
        conditions=conditions,
        seed=0,
        device=device,
        force=True,
        progress=lambda batches, total: track(batches, "evaluating", total),
    )
    run_stats(out / "eval", metrics=("mse", "psnr"), out=out / "stats")


def _denoise_step(
    out: Path, best: Path, quick: bool, device: str, log: Callable[[str], None]
) -> tuple[Path, Path, dict]:
    """Step 5: a held-out volume with noise, denoised two ways; returns the noisy and denoised files and the PSNRs."""
    import pandas as pd

    from brainae.apply import denoise
    from brainae.checkpoint import load_checkpoint
    from brainae.infer import denoise_volume, load_volumetric
    from brainae.io import load_volume, save_like
    from brainae.pretrained import THESIS_RES_UNET
    from brainae.sample import SAMPLE_DIR
    from brainae.scoring import masked_psnr

    volumes = pd.read_csv(out / "dataset" / "volumes.csv")
    held_out = volumes[volumes["split"] == "test"].iloc[0]
    source_file = SAMPLE_DIR / held_out["file"]
    clean = load_volume(source_file)
    rng = np.random.default_rng(0)
    sd = 0.04 * float(clean.data.max())  # as the evaluation's noise-0.04 and benchmarks/apply.py
    noisy_data = clean.data + rng.normal(0.0, sd, clean.data.shape).astype(np.float32)
    den_dir = out / "denoise"
    noisy_path = save_like(den_dir / "noisy.nii.gz", noisy_data, clean)
    model_path = best if quick else THESIS_RES_UNET
    model, ckpt = load_checkpoint(model_path)
    noisy = load_volume(noisy_path)
    log(
        f"5/5 denoise: {held_out['file']} + Gaussian noise (sd 4 % of the volume maximum) with {model_path.name}"
    )
    result = denoise(noisy, model, ckpt.preprocessing, device=device)
    save_like(den_dir / f"denoised_{'run' if quick else 'thesis'}.nii.gz", result.data, noisy)
    brain = result.inside  # the voxels the slice model processed: both results are scored on them
    ours = denoise_volume(noisy, load_volumetric(None, task="denoise", device=device), device=device)
    denoised_path = save_like(den_dir / "denoised.nii.gz", ours, noisy)
    peak = float(clean.data.max())  # PSNR over the processed voxels, the clean volume's maximum as peak
    facts = {
        "volume": held_out["file"],
        "model": "brainae-denoise.safetensors (the default of brainae denoise)",
        "psnr_noisy_db": round(masked_psnr(clean.data, noisy_data, brain, peak), 2),
        "psnr_denoised_db": round(masked_psnr(clean.data, ours, brain, peak), 2),
        "slice_model": model_path.name,
        "psnr_slice_model_db": round(masked_psnr(clean.data, result.data, brain, peak), 2),
        "slices_processed": int(result.n_processed),
    }
    return noisy_path, denoised_path, facts
