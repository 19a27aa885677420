"""A folder of T1 NIfTI volumes -> a prepared, volume-split slice dataset (SPEC stages 1-5).

:func:`inspect_folder` reports every file (problems included, never a crash). :func:`prepare` makes the
dataset folder described in ``docs/dataset-format.md``:

1. list the volumes, skip unreadable / non-3-D / NaN files and duplicated subjects (warning each);
2. choose the slicing profile from the voxel sizes (:func:`brainae.volume.choose_profile`, the majority
   over the cohort) and the field of view (the cohort's median in-plane extent), reorient to RAS+;
3. measure every slice for the three selection methods (:mod:`brainae.select`), brain masks from
   :mod:`brainae.brainmask`; thresholds from the cohort;
4. split by subject (:mod:`brainae.split`) with demographics from :mod:`brainae.cohort`;
5. resample the kept slices to ``size`` and scale to [0, 1] (:mod:`brainae.volume`) into ``slices.npy``.

The output folder is written in a temporary folder and renamed at the end: it is complete or absent.
Re-running with the same settings and inputs does nothing; different settings need ``force=True``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from brainae import __version__
from brainae.errors import BrainaeError, BrainaeWarning
from brainae.io import (
    atomic_dir,
    atomic_path,
    check_not_input,
    check_output,
    list_niftis,
    load_volume,
    read_header,
    read_marker,
    subject_id,
    volume_id,
    write_marker,
)
from brainae.select import DEFAULT_BRAIN_FRACTION, KEEP_COLUMN, METHODS, check_method
from brainae.volume import PROFILES, SCALINGS, Preprocessing, choose_profile, in_plane_zooms, to_view

T = TypeVar("T")
Track = Callable[..., Iterator[Any]]


def _no_track(iterable: Iterable[T], description: str = "", total: int | None = None) -> Iterator[T]:
    yield from iterable


# ----------------------------------------------------------------------------------------------- inspect
def inspect_folder(folder: str | os.PathLike, *, track: Track = _no_track):
    """One row per NIfTI file: facts, or the reason it cannot be used (``status`` != ``ok``).

    Columns: ``file``, ``volume_id``, ``subject_id``, ``status`` (``ok``, ``unreadable``, ``not-3d``,
    ``nan``, ``duplicate``), ``reason``, ``shape``, ``zooms``, ``axcodes``, ``dtype``, ``min``, ``max``,
    ``mean``, ``profile``.
    """
    import pandas as pd

    files = list_niftis(folder)
    rows = []
    seen: dict[str, str] = {}
    for f in track(files, description="inspecting", total=len(files)):
        row: dict[str, Any] = {"file": f.name, "volume_id": volume_id(f), "subject_id": subject_id(f)}
        try:
            vol = load_volume(f)
        except BrainaeError as exc:
            msg = str(exc)
            status = "not-3d" if "-D image" in msg else "nan" if "NaN" in msg else "unreadable"
            try:
                h = read_header(f)
                row.update(shape="x".join(map(str, h.shape)), dtype=h.dtype)
            except BrainaeError:
                pass
            row.update(status=status, reason=msg.split(": ", 1)[-1])
            rows.append(row)
            continue
        h = vol.header
        row.update(
            status="ok",
            reason="",
            shape="x".join(map(str, h.shape)),
            zooms="x".join(f"{z:g}" for z in h.zooms[:3]),
            axcodes="".join(h.axcodes),
            dtype=h.dtype,
            min=float(vol.data.min()),
            max=float(vol.data.max()),
            mean=float(vol.data.mean()),
            profile=choose_profile(vol.zooms)[0],
        )
        sid = row["subject_id"]
        if sid in seen:
            row.update(status="duplicate", reason=f"same subject as {seen[sid]}")
        else:
            seen[sid] = f.name
        rows.append(row)
    cols = [
        "file",
        "volume_id",
        "subject_id",
        "status",
        "reason",
        "shape",
        "zooms",
        "axcodes",
        "dtype",
        "min",
        "max",
        "mean",
        "profile",
    ]
    return pd.DataFrame(rows).reindex(columns=cols)


def write_inspect(folder: str | os.PathLike, out: str | os.PathLike, *, track: Track = _no_track):
    """Run :func:`inspect_folder` and write ``inspect.csv`` and ``inspect.png`` into ``out``.

    Both files are written or neither (a folder that this call created is removed again on failure); ``out``
    must not be, contain or lie inside ``folder``.
    """
    from brainae.figures import inspect_figure

    out = Path(out)
    check_not_input(out, [folder], "output folder")
    table = inspect_folder(folder, track=track)
    created = not out.exists()
    try:
        with atomic_path(out / "inspect.csv") as tmp:
            table.to_csv(tmp, index=False)
            inspect_figure(table, out / "inspect.png")
    except BaseException:
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise
    return table


# ----------------------------------------------------------------------------------------------- prepare
@dataclass
class PrepareConfig:
    """Settings of :func:`prepare` (all saved in ``settings.json``)."""

    select: str = "brain-mask"
    size: int = 128
    seed: int = 0
    val: float = 0.14
    test: float = 0.08
    scaling: str = "slice-minmax"
    profile: str = "auto"
    fov_mm: float | None = None
    fov: str = "cohort"  # "cohort": the cohort's median extent; "slice": each slice's own (thesis)
    brain_fraction: float = DEFAULT_BRAIN_FRACTION
    mask_method: str = "auto"
    skull_strip: bool = False
    demographics: str | None = None
    percentiles: tuple[float, float] = field(default=(0.5, 99.5))

    def check(self) -> None:
        check_method(self.select)
        if self.scaling not in SCALINGS:
            raise BrainaeError(f"unknown scaling {self.scaling!r}; choose one of {', '.join(SCALINGS)}")
        if self.profile != "auto" and self.profile not in PROFILES:
            raise BrainaeError(
                f"unknown profile {self.profile!r}; choose auto or one of {', '.join(PROFILES)}"
            )
        if self.fov not in ("cohort", "slice"):
            raise BrainaeError(f"unknown fov mode {self.fov!r}; choose cohort or slice")
        if not 0 <= self.brain_fraction < 1:
            raise BrainaeError(f"brain fraction {self.brain_fraction}: must be in [0, 1)")
        from brainae.brainmask import resolve_method

        if self.mask_method == "none":
            if self.skull_strip:
                raise BrainaeError(
                    "--skull-strip needs brain masks; use --mask-method auto, deepbet or threshold"
                )
            if self.select == "brain-mask":
                raise BrainaeError(
                    "--select brain-mask needs brain masks; use --mask-method auto, deepbet or threshold "
                    "(none is for the nonzero-* methods)"
                )
        elif self.mask_method not in ("auto", "deepbet", "threshold"):
            resolve_method(self.mask_method)


@dataclass
class PrepareResult:
    path: Path
    n_volumes: int
    n_slices: int
    splits: dict[str, int]
    skipped: list[str]
    reused: bool = False


def _fingerprint(files: list[Path]) -> list[dict]:
    return [{"file": f.name, "bytes": f.stat().st_size, "mtime_ns": f.stat().st_mtime_ns} for f in files]


def _settings_key(settings: dict) -> str:
    keep = {k: settings[k] for k in ("config", "inputs") if k in settings}
    return hashlib.sha256(json.dumps(keep, sort_keys=True, default=str).encode()).hexdigest()


def prepare(
    folder: str | os.PathLike,
    out: str | os.PathLike,
    config: PrepareConfig | None = None,
    *,
    force: bool = False,
    track: Track = _no_track,
) -> PrepareResult:
    """Make the prepared dataset folder ``out`` from the NIfTI volumes in ``folder``. See the module doc."""
    import pandas as pd

    from brainae.brainmask import brain_mask, resolve_method
    from brainae.cohort import match_demographics, read_demographics
    from brainae.select import cohort_thresholds, keep_flags, slice_measures
    from brainae.split import split_table, stratified_split

    config = config or PrepareConfig()
    config.check()
    folder, out = Path(folder), Path(out)
    files = list_niftis(folder)
    check_not_input(out, [folder, config.demographics], "output folder")
    demo_table = read_demographics(config.demographics) if config.demographics else None

    # Re-use an identical dataset; replace only a dataset that brainae wrote, and only with --force.
    settings_probe = {"config": _config_dict(config), "inputs": _fingerprint(files)}
    if out.is_dir() and not force:
        old = out / "settings.json"
        if old.is_file() and (out / "slices.npy").is_file():
            try:
                previous = json.loads(old.read_text())
            except ValueError:
                previous = {}
            if _settings_key(previous) == _settings_key(settings_probe):
                idx = pd.read_csv(out / "index.csv")
                return PrepareResult(
                    out,
                    int(previous.get("n_volumes", 0)),
                    len(idx),
                    idx["split"].value_counts().to_dict(),
                    [],
                    reused=True,
                )
    try:
        check_output(out, "dataset", [folder, config.demographics], force=force)
    except BrainaeError as exc:
        if force or read_marker(out) is None:
            raise
        raise BrainaeError(
            f"{out}: exists with other settings or inputs; add --force to replace it, or choose another --out"
        ) from exc

    # 1. readable, 3-D, finite, one volume per subject.
    headers: dict[Path, Any] = {}
    skipped: list[str] = []
    for f in files:
        try:
            h = read_header(f)
            if len(h.shape) < 3 or (len(h.shape) > 3 and any(s != 1 for s in h.shape[3:])):
                raise BrainaeError(f"{f}: {len(h.shape)}-D image of shape {h.shape}; give 3-D volumes only")
            headers[f] = h
        except BrainaeError as exc:
            skipped.append(f.name)
            warnings.warn(f"skipped {exc}", BrainaeWarning, stacklevel=2)
    seen: dict[str, Path] = {}
    for f in list(headers):
        sid = subject_id(f)
        if sid in seen:
            warnings.warn(
                f"skipped {f.name}: same subject {sid} as {seen[sid].name} (one volume per subject)",
                BrainaeWarning,
                stacklevel=2,
            )
            skipped.append(f.name)
            del headers[f]
        else:
            seen[sid] = f
    if not headers:
        raise BrainaeError(
            f"{folder}: no usable 3-D volume among {len(files)} NIfTI files (see warnings above)"
        )

    mask_method = "none" if config.mask_method == "none" else resolve_method(config.mask_method)
    if config.profile != "auto":
        profile = config.profile
    else:
        votes = [choose_profile(h.ras_zooms)[0] for h in headers.values()]
        profile = max(PROFILES, key=votes.count)
        odd = sum(v != profile for v in votes)
        if odd:
            warnings.warn(
                f"{odd} volume(s) would prefer another profile than the cohort's {profile}; all are sliced "
                f"{profile} after reorientation to RAS+",
                BrainaeWarning,
                stacklevel=2,
            )

    # 2-3. Pass 1: load, measure every slice.
    measures = []
    facts: dict[Path, dict] = {}
    for f in track(list(headers), description="measuring slices", total=len(headers)):
        try:
            vol = load_volume(f)
        except BrainaeError as exc:
            skipped.append(f.name)
            warnings.warn(f"skipped {exc}", BrainaeWarning, stacklevel=2)
            continue
        mask = None if mask_method == "none" else brain_mask(vol.data, vol.zooms, mask_method)
        if config.skull_strip:
            vol.data = np.where(mask, vol.data, vol.data.min()).astype(np.float32)
        view = to_view(vol.data, profile)
        m = slice_measures(np.asarray(view), None if mask is None else np.asarray(to_view(mask, profile)))
        h = headers[f]
        spacing = in_plane_zooms(vol.zooms, profile)
        facts[f] = dict(
            n_slices=view.shape[0],
            extent=max(view.shape[1] * spacing[0], view.shape[2] * spacing[1]),
            shape="x".join(map(str, h.shape)),
            zooms="x".join(f"{z:g}" for z in h.zooms[:3]),
            axcodes="".join(h.axcodes),
            dtype=h.dtype,
            intensity_min=float(vol.data.min()),
            intensity_max=float(vol.data.max()),
        )
        table = pd.DataFrame({"volume_id": volume_id(f), "slice": np.arange(view.shape[0]), **m})
        table["_file"] = str(f)
        measures.append(table)
    if not measures:
        raise BrainaeError(f"{folder}: no volume could be read (see warnings above)")

    selection = pd.concat(measures, ignore_index=True)
    thresholds = cohort_thresholds(selection, config.brain_fraction)
    selection = keep_flags(selection, thresholds)
    keep_col = KEEP_COLUMN[config.select]

    if config.fov_mm is not None:
        fov_mm: float | None = float(config.fov_mm)
    elif config.fov == "cohort":
        fov_mm = float(round(np.median([facts[f]["extent"] for f in facts]), 2))
    else:
        fov_mm = None
    prep = Preprocessing(
        profile=profile,
        size=config.size,
        fov_mm=fov_mm,
        scaling=config.scaling,
        percentiles=tuple(config.percentiles),
        skull_strip=config.skull_strip,
    )

    # 4. Volumes table, demographics, split.
    used = [f for f in headers if f in facts]
    kept_per_volume = selection.groupby("_file")[keep_col].sum()
    empty = [f for f in used if int(kept_per_volume.get(str(f), 0)) == 0]
    for f in empty:
        warnings.warn(
            f"skipped {f.name}: no slice passes the {config.select} selection (threshold "
            f"{thresholds[config.select]:.3g}); check the image or use another --select",
            BrainaeWarning,
            stacklevel=2,
        )
        skipped.append(f.name)
    used = [f for f in used if f not in empty]
    if not used:
        raise BrainaeError(f"{folder}: no volume keeps any slice with --select {config.select}")
    volumes = pd.DataFrame(
        {
            "volume_id": [volume_id(f) for f in used],
            "subject_id": [subject_id(f) for f in used],
            "file": [f.name for f in used],
        }
    )
    if demo_table is not None:
        demo = match_demographics(used, demo_table, config.demographics)
        volumes = pd.concat([volumes, demo.reset_index(drop=True)], axis=1)
    else:
        for col in ("age", "sex", "ethnicity", "age_group"):
            volumes[col] = None
    volumes["split"] = stratified_split(
        volumes, val=config.val, test=config.test, seed=config.seed
    ).to_numpy()
    volumes["n_slices"] = [facts[f]["n_slices"] for f in used]
    volumes["n_kept"] = [int(kept_per_volume.get(str(f), 0)) for f in used]
    for col in ("shape", "zooms", "axcodes", "dtype", "intensity_min", "intensity_max"):
        volumes[col] = [facts[f][col] for f in used]
    split_of = dict(zip(volumes["volume_id"], volumes["split"]))

    # 5. Pass 2: write the kept slices.
    from brainae.volume import volume_to_slices

    n_total = int(volumes["n_kept"].sum())
    with atomic_dir(out) as tmp:
        arr = np.lib.format.open_memmap(
            tmp / "slices.npy", mode="w+", dtype=np.float32, shape=(n_total, prep.size, prep.size)
        )
        index_parts = []
        montage_inputs = []
        pos = 0
        for f in track(used, description="writing slices", total=len(used)):
            vol = load_volume(f)
            if config.skull_strip:  # the same mask as in pass 1 (deterministic), not kept in memory
                mask = brain_mask(vol.data, vol.zooms, mask_method)
                vol.data = np.where(mask, vol.data, vol.data.min()).astype(np.float32)
            stack = volume_to_slices(vol.data, vol.zooms, prep)
            sel = selection[selection["_file"] == str(f)].sort_values("slice")
            keep = sel[keep_col].to_numpy()
            k = int(keep.sum())
            arr[pos : pos + k] = stack.images[keep]
            pos += k
            part = sel.loc[keep, ["volume_id", "slice", "brain_frac", "nonzero_frac", "nonzero_mean"]].copy()
            part.insert(2, "split", split_of[volume_id(f)])
            part["scale_lo"] = stack.lo[keep]
            part["scale_hi"] = stack.hi[keep]
            index_parts.append(part)
            if len(montage_inputs) < 2:
                thumbs = stack.images[:, :: max(prep.size // 48, 1), :: max(prep.size // 48, 1)]
                montage_inputs.append((volume_id(f), thumbs, sel))
        arr.flush()
        del arr
        index = pd.concat(index_parts, ignore_index=True)
        index.to_csv(tmp / "index.csv", index=False)
        volumes.to_csv(tmp / "volumes.csv", index=False)
        selection.drop(columns=["_file"]).to_csv(tmp / "selection.csv", index=False)
        split_table(volumes).to_csv(tmp / "split.csv", index=False)
        settings = {
            "version": __version__,
            "preprocessing": prep.to_dict(),
            "select": {
                "method": config.select,
                "thresholds": thresholds,
                "brain_fraction": config.brain_fraction,
                "mask_method": mask_method,
                "kept_by_method": {m: int(selection[KEEP_COLUMN[m]].sum()) for m in METHODS},
                "slices_total": len(selection),
            },
            "split": {
                "val": config.val,
                "test": config.test,
                "seed": config.seed,
                "volumes": volumes["split"].value_counts().to_dict(),
                "slices": index["split"].value_counts().to_dict(),
            },
            "seed": config.seed,
            "source": str(folder.resolve()),
            "demographics": str(Path(config.demographics).resolve()) if config.demographics else None,
            "n_volumes": len(used),
            "skipped": skipped,
            "config": _config_dict(config),
            "inputs": _fingerprint(files),
        }
        (tmp / "settings.json").write_text(json.dumps(settings, indent=2, default=str))
        _write_figures(tmp, selection, thresholds, volumes, montage_inputs)
        write_marker(tmp, "dataset")
    return PrepareResult(out, len(used), n_total, index["split"].value_counts().to_dict(), skipped)


def _config_dict(config: PrepareConfig) -> dict:
    d = asdict(config)
    d["percentiles"] = list(config.percentiles)
    if d["demographics"]:
        d["demographics"] = str(Path(d["demographics"]).resolve())
    return d


def _write_figures(out: Path, selection, thresholds, volumes, montage_inputs) -> None:
    from brainae.figures import selection_counts_figure, selection_montage_figure, split_figure

    figs = out / "figures"
    figs.mkdir(exist_ok=True)
    selection_counts_figure(selection, thresholds, figs / "selection_counts.png")
    selection_montage_figure(montage_inputs, figs / "selection_montage.png")
    split_figure(volumes, figs / "split.png")
