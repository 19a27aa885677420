"""Commands of brainae's volumetric models: ``fit`` (train one for a task) and ``info`` (a model card)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from brainae.cli._app import command, console, err_console
from brainae.pretrained import resolve_model_name  # the one resolver of model names (re-exported here)


@command("fit")
def fit_command(
    task: Annotated[
        str,
        typer.Argument(
            metavar="TASK",
            help="denoise, inpaint, anomaly or plain-ae (a 3-D U-Net), atlas (the inpainting atlas: "
            "registered healthy volumes, written as .npz) or normative (the default anomaly model: a healthy "
            "template with per-voxel statistics, written as .npz).",
        ),
    ],
    data: Annotated[Path, typer.Argument(metavar="DIR", help="Folder of healthy T1 NIfTI volumes.")],
    out: Annotated[
        Path,
        typer.Option("--out", "-o", help="Checkpoint to write (.safetensors; .npz for atlas). Required."),
    ],
    split: Annotated[
        str | None,
        typer.Option(
            "--split",
            help="'ixi' (the shipped split of the 30 shared IXI volumes), a JSON file with 'train' and 'val' "
            "lists of volume ids, or 'random' (15 % of the volumes for validation).",
        ),
    ] = "random",
    steps: Annotated[
        int | None, typer.Option("--steps", min=1, help="Optimiser steps [default: the recipe's].")
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option("--batch-size", min=1, help="Patches per step [default: 4].")
    ] = None,
    patch: Annotated[
        int | None, typer.Option("--patch", min=8, help="Patch side in voxels [default: 48].")
    ] = None,
    lr: Annotated[float | None, typer.Option("--lr", help="Peak learning rate [default: 1e-3].")] = None,
    widths: Annotated[
        str | None,
        typer.Option(
            "--widths", help="The 3-D U-Net's channels per level, e.g. 16,32,64,128 [default: the recipe's]."
        ),
    ] = None,
    max_seconds: Annotated[
        float | None,
        typer.Option(
            "--max-seconds",
            min=1,
            help="Stop after this many seconds of training; the learning-rate schedule follows the clock "
            "(the card records the steps taken).",
        ),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Random seed.")] = 0,
    mask_method: Annotated[
        str | None,
        typer.Option("--mask-method", help="Brain masks: deepbet, threshold or auto [default: deepbet]."),
    ] = None,
    masks: Annotated[
        Path | None,
        typer.Option(
            "--masks", help="Folder of brain-mask NIfTIs named as the volumes (instead of computing them)."
        ),
    ] = None,
    device: Annotated[str, typer.Option("--device", help="cpu, cuda, cuda:N or auto.")] = "auto",
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing checkpoint.")] = False,
) -> None:
    """Train a volumetric model (3-D U-Net) for one task from a folder of healthy T1 volumes.

    With no options other than --split ixi this is the recipe of the shipped default model of TASK:
    brainae fit denoise ../shared/data/ixi-t1-2mm --split ixi --out brainae-denoise.safetensors

    TASK atlas builds the inpainting atlas instead (no training): the train volumes are registered to their
    mean and stored; the val volumes calibrate how much of its detail a fill takes
    (brainae fit atlas ../shared/data/ixi-t1-2mm --split ixi --out brainae-inpaint-atlas.npz).

    TASK normative builds the default anomaly model (no training): the train volumes are registered (ANTs) to
    a symmetric template rebuilt from them, per-voxel healthy statistics are kept, and the val volumes
    calibrate the score (brainae fit normative ../shared/data/ixi-t1-2mm --split ixi --out brainae-normative.npz).
    """
    import dataclasses

    from brainae.checkpoint import check_checkpoint_output
    from brainae.errors import BrainaeError
    from brainae.fit import RECIPES, fit_folder, save_fitted
    from brainae.infer import calibrate_fitted
    from brainae.tasks import get_task

    if task in ("atlas", "normative"):
        _fit_npz(task, data, out, split=split, masks=masks, mask_method=mask_method, seed=seed, force=force)
        return
    get_task(task)
    split_file = Path(split) if split not in (None, "random", "ixi") else None
    check_checkpoint_output(out, [data, masks, split_file], force)
    width_list = None
    if widths is not None:
        try:
            width_list = tuple(int(w) for w in widths.split(","))
        except ValueError:
            width_list = ()
        if len(width_list) < 2 or min(width_list) < 1:
            raise BrainaeError(f"--widths {widths!r}: give two or more positive integers, e.g. 16,32,64")
    config = RECIPES[task]
    changes = {
        k: v
        for k, v in {
            "steps": steps,
            "batch_size": batch_size,
            "patch": patch,
            "lr": lr,
            "mask_method": mask_method,
            "widths": width_list,
            "max_seconds": max_seconds,
        }.items()
        if v is not None
    }
    config = dataclasses.replace(config, seed=seed, **changes)

    def log(msg: str) -> None:
        err_console.print(msg, markup=False, highlight=False)

    split = None if split in (None, "random") else split
    fitted = fit_folder(data, config, split=split, masks=masks, device=device, log=log)  # train
    preprocessing, normative = calibrate_fitted(fitted, device=device, seed=config.seed, log=log)  # calibrate
    summary = save_fitted(out, dataclasses.replace(fitted, preprocessing=preprocessing), normative)  # write
    console.print(json.dumps(summary))


def _fit_npz(kind: str, data: Path, out: Path, *, split, masks, mask_method, seed: int, force: bool) -> None:
    """``brainae fit atlas`` / ``fit normative``: build the ``.npz`` (no training), after every check."""
    from brainae.atlas import fit_atlas, is_atlas
    from brainae.errors import BrainaeError
    from brainae.io import check_output_file
    from brainae.normative import fit_normative, is_normative_file

    what = {"atlas": "an atlas", "normative": "a normative model"}[kind]
    if out.suffix.lower() != ".npz":
        raise BrainaeError(f"{out}: {what} is written as .npz; give --out NAME.npz")
    if not data.is_dir():
        raise BrainaeError(f"{data}: no such folder; give a folder of healthy T1 NIfTI volumes")
    split_file = Path(split) if split not in (None, "random", "ixi") else None
    check_output_file(
        out,
        [data, masks, split_file],
        force=force,
        is_ours=is_atlas if kind == "atlas" else is_normative_file,
        what=f"{what} that brainae wrote",
        option="--out",
    )

    def log(msg: str) -> None:
        err_console.print(msg, markup=False, highlight=False)

    build = fit_atlas if kind == "atlas" else fit_normative
    built, summary = build(
        data,
        split=None if split in (None, "random") else split,
        masks=masks,
        mask_method=mask_method or "deepbet",
        seed=seed,
        log=log,
    )
    built.save(out)
    console.print(json.dumps({kind: str(out), **summary}))


@command("info")
def info_command(
    model: Annotated[
        str,
        typer.Argument(
            metavar="MODEL",
            help="A checkpoint, atlas or normative-model file, or a shipped model: denoise, inpaint, anomaly "
            "(brainae's 3-D U-Nets), atlas (the default inpainter), normative (the default anomaly model) or "
            "thesis.",
        ),
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print the whole card as JSON.")] = False,
) -> None:
    """Show a model card: task, architecture, training data and recipe, preprocessing, measured numbers."""
    from brainae.checkpoint import verify_checkpoint
    from brainae.errors import BrainaeError
    from brainae.normative import is_normative_file

    path = resolve_model_name(model)
    if is_normative_file(path):
        _normative_info(path, as_json)
        return
    if path.suffix.lower() == ".npz":
        _atlas_info(path, as_json)
        return
    ckpt, parameters = verify_checkpoint(path)  # NaN weights, crafted sizes: refused, nothing is built
    card = ckpt.metadata()
    card["file"] = str(path)
    card["size_mb"] = round(path.stat().st_size / 1e6, 2)
    card["parameters"] = parameters
    if as_json:
        typer.echo(json.dumps(card, indent=1, default=str))
        return
    try:
        lines = _card_lines(ckpt, card, path)
    except (TypeError, ValueError, KeyError, AttributeError, IndexError) as exc:
        raise BrainaeError(
            f"{path}: a damaged model card ({type(exc).__name__}: {exc}); re-create the checkpoint"
        ) from None
    for line in lines:
        console.print(line, markup=False, highlight=False, soft_wrap=True)


def _card_lines(ckpt, card: dict, path: Path) -> list[str]:
    """The lines of ``brainae info`` for a checkpoint."""
    from brainae.card import Training

    prep, training, norm = ckpt.preprocessing, ckpt.training, ckpt.normative
    source = ckpt.source.to_dict() if ckpt.source is not None else {}
    task = prep.task if ckpt.volumetric else "reconstruct (slice autoencoder)"
    lines = [
        f"model        {path.name} ({card['size_mb']} MB)",
        f"task         {task}",
        f"architecture {ckpt.arch} {ckpt.arch_kwargs} ({card['parameters']:,} parameters)",
    ]
    if ckpt.volumetric:
        grid = "the input's own grid" if prep.grid_mm is None else f"{prep.grid_mm} mm isotropic"
        lines.append(
            f"input        {', '.join(prep.inputs)}; {grid}; intensity reference "
            f"{prep.reference}; skull-stripped: {prep.skull_stripped}"
        )
        training = training or Training()
        lines.append(
            f"training     {len(training.get('train_ids', []))} volumes ({source.get('data')}), "
            f"{len(training.get('val_ids', []))} validation; split {training.get('split')}; "
            f"recipe {json.dumps(training.recipe)}; {training.get('seconds', 0):.0f} s on "
            f"{training.get('device')}"
            + (f" ({training.get('precision')})" if training.get("precision") else "")
            + (
                f", stopped by the clock at step {training.get('steps_done')}"
                if training.recipe.get("max_seconds") and training.get("steps_done")
                else ""
            )
        )
    else:
        lines.append(f"input        {json.dumps(prep.to_dict()) if prep else 'thesis preprocessing'}")
        stored = training.to_dict() if training else {}
        lines.append(
            f"training     {json.dumps({k: stored[k] for k in list(stored)[:6]}) if stored else 'n/a'}"
        )
    if norm is not None:
        voxels = norm.details.get("voxels")
        lines.append(
            f"normative    {norm.n} healthy volumes: score mean {norm.mean}, sd {norm.std}"
            + (f"; voxel calibration from {voxels} brain voxels" if voxels else "")
        )
    elif ckpt.volumetric and prep.task not in ("anomaly", "plain-ae"):
        blend = prep.blend
        if blend and "hole_ml" in blend:
            lines.append(
                f"calibration  share of the correction kept, by hole volume, from {blend.get('cases')} "
                "validation holes: "
                + ", ".join(f"{m:.1f} ml {a:.2f}" for m, a in zip(blend["hole_ml"], blend["alpha"]))
            )
        elif blend:
            if blend.get("components"):
                mixes = (
                    f"blend tables (model and {len(blend['components'])} non-local means and smoothing "
                    f"estimates, {len(blend.get('class_edges') or ()) + 1} intensity classes)"
                )
            else:
                mixes = "blend table (model and non-local means)" if blend.get("nlm") else "blend table"
            lines.append(
                f"calibration  {mixes} from {blend.get('cases')} noisy validation cases (voxels of "
                "1.5 mm or more, or a scan with air around it); finer skull-stripped scans: strength chosen "
                "per scan by SURE"
            )
            own = blend.get("own_noise")
            if own:
                lines.append(
                    f"own noise    the calibration scans carry noise of sd {own['sd']:.4f} at "
                    f"{own['voxel_mm3']:g} mm^3 voxels; a scan with air and smaller voxels keeps the extra "
                    "noise such a scan carries of its own (sd x sqrt(ratio of voxel volumes))"
                )
    else:
        lines.append("normative    none (anomaly z-scores not available)")
    lines.append(f"source       {json.dumps(source)}")
    if source.get("measured"):
        lines.append(f"measured     {json.dumps(source['measured'])}")
    return lines


def _normative_info(path: Path, as_json: bool) -> None:
    """The card of a normative model (:mod:`brainae.normative`)."""
    from dataclasses import asdict

    from brainae.normative import load_normative

    m = load_normative(path)
    prov, st, cal = m.provenance, m.settings, m.calibration
    card = {
        "file": str(path),
        "size_mb": round(path.stat().st_size / 1e6, 2),
        "task": "anomaly",
        "kind": "normative model of healthy anatomy (template + per-voxel statistics; no network)",
        "grid": list(m.template.shape),
        "settings": asdict(st),
        "provenance": prov,
        "calibration": {k: v for k, v in cal.items() if k not in ("levels", "thresholds")},
    }
    if as_json:
        typer.echo(json.dumps(card, indent=1, default=str))
        return
    lines = [
        f"model        {path.name} ({card['size_mb']} MB)",
        "task         anomaly",
        f"architecture normative model: symmetric template of {len(prov.get('train', []))} healthy brains "
        f"({prov.get('source')}) and their mirror images, 2 mm grid {tuple(card['grid'])}; no network",
        f"method       ANTs affine + SyN (iterations {tuple(st.syn_iterations)}, flow sigma {st.flow_sigma}) to the "
        "template; per voxel: intensity z-score (after matching the brain's percentiles), left-right "
        "asymmetry z-score, swelling (log-Jacobian z-score)",
        f"calibration  {cal.get('n')} val volumes, {cal.get('voxels')} brain voxels; volume score "
        f"{cal.get('mean', float('nan')):.3f} +- {cal.get('std') or float('nan'):.3f}",
        "recipe       brainae fit normative ../shared/data/ixi-t1-2mm --split ixi --out brainae-normative.npz",
        "data         derived from the IXI dataset (CC BY-SA 3.0): shared under the same licence",
    ]
    for line in lines:
        console.print(line, markup=False, highlight=False)


def _atlas_info(path: Path, as_json: bool) -> None:
    """The card of an inpainting atlas (:mod:`brainae.atlas`)."""
    from dataclasses import asdict

    from brainae.atlas import load_atlas

    atlas = load_atlas(path)
    prov, st = atlas.provenance, atlas.settings
    card = {
        "file": str(path),
        "size_mb": round(path.stat().st_size / 1e6, 2),
        "task": "inpaint",
        "kind": "exemplar atlas (no network)",
        "volumes": int(atlas.volumes.shape[0]),
        "grid": list(atlas.volumes.shape[1:]),
        "settings": asdict(st),
        "provenance": prov,
    }
    if as_json:
        typer.echo(json.dumps(card, indent=1, default=str))
        return
    cal = prov.get("calibration") if isinstance(prov.get("calibration"), dict) else {}

    def count(key: str) -> int:
        value = prov.get(key)
        return len(value) if isinstance(value, list) else 0

    lines = [
        f"model        {path.name} ({card['size_mb']} MB)",
        "task         inpaint",
        f"architecture exemplar atlas: {card['volumes']} healthy volumes registered to their mean, 2 mm grid "
        f"{tuple(card['grid'])}; no network",
        "method       biharmonic fill + share x the detail of the best-matching atlas regions (1-voxel ring "
        f"matched over +-{st.radius} voxels, {len(st.scales)} scalings x {1 + 6 * sum(1 for a in st.angles if a)} "
        f"rotations, {st.keep} candidates combined per voxel by "
        f"{'joint weights' if st.fusion == 'joint' else 'ring-mismatch weights'})",
        f"training     atlas volumes: {count('train')} ({prov.get('source')}); calibration: "
        f"{count('val')} val volumes, {cal.get('holes')} holes",
        f"calibration  share {st.share}; mean gain over biharmonic on the calibration holes "
        f"{cal.get('mean_gain_db_over_biharmonic')} dB; falls back to biharmonic below registration "
        f"correlation {st.min_fit} or above ring mismatch {st.max_ring_rms}",
        "recipe       brainae fit atlas ../shared/data/ixi-t1-2mm --split ixi --out brainae-inpaint-atlas.npz",
        "data         derived from the IXI dataset (CC BY-SA 3.0): shared under the same licence",
    ]
    for line in lines:
        console.print(line, markup=False, highlight=False)
