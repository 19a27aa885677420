"""A folder of T1 NIfTI volumes -> a prepared, volume-split slice dataset (SPEC stages 1-5).

:func:`inspect_folder` reports every file (problems included, never a crash). :func:`prepare` makes the
dataset folder described in ``docs/dataset-format.md``:

1. list the volumes (of a BIDS dataset: its ``sub-*/[ses-*/]anat/*_T1w`` scans, with ``participants.tsv`` as the
   demographics when none are given), skip unreadable / non-3-D / NaN files and duplicated subjects (a
   subject's later sessions; warning each);
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
import itertools
import json
import os
import shutil
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from brainae import __version__
from brainae.errors import BrainaeError, BrainaeWarning
from brainae.io import (
    HeaderFacts,
    VolumeError,
    atomic_dir,
    atomic_path,
    check_3d,
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
from brainae.volume import PROFILES, Preprocessing, choose_profile, in_plane_zooms, to_view

T = TypeVar("T")
Track = Callable[..., Iterator[Any]]


def _no_track(iterable: Iterable[T], description: str = "", total: int | None = None) -> Iterator[T]:
    yield from iterable


# ----------------------------------------------------------------------------------------------- inputs
def input_files(folder: str | os.PathLike) -> list[Path]:
    """The volumes of ``folder``: the NIfTI files directly in it, or, for a BIDS dataset, its
    ``sub-*/[ses-*/]anat/*_T1w.nii[.gz]`` scans (:func:`brainae.bids.find_t1w`), sorted."""
    from brainae.bids import find_t1w, is_bids

    if is_bids(folder):
        return [scan.path for scan in find_t1w(folder)]
    return list_niftis(folder)


# ----------------------------------------------------------------------------------------------- inspect
def inspect_folder(folder: str | os.PathLike, *, track: Track = _no_track):
    """One row per NIfTI file: facts, or the reason it cannot be used (``status`` != ``ok``).

    Columns: ``file``, ``volume_id``, ``subject_id``, ``status`` (``ok``, ``unreadable``, ``not-3d``,
    ``nan``, ``duplicate``), ``reason``, ``shape``, ``zooms``, ``axcodes``, ``dtype``, ``min``, ``max``,
    ``mean``, ``profile``.
    """
    import pandas as pd

    files = input_files(folder)
    rows = []
    seen: dict[str, str] = {}
    for f in track(files, description="inspecting", total=len(files)):
        row: dict[str, Any] = {"file": f.name, "volume_id": volume_id(f), "subject_id": subject_id(f)}
        try:
            vol = load_volume(f)
        except VolumeError as exc:
            msg, status = str(exc), exc.kind
            try:
                h = read_header(f)
                row.update(shape="x".join(map(str, h.shape)), dtype=h.dtype)
            except VolumeError:  # no header either: the row's status and reason already say why
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
FOV_MODES = ("cohort", "slice", "fixed")


@dataclass
class PrepareConfig:
    """Settings of :func:`prepare` (all saved in ``settings.json``).

    ``preprocessing`` gives the slice size, intensity scaling (and percentiles) and skull stripping; its
    ``profile`` is used when ``auto_profile`` is False and its ``fov_mm`` when ``fov`` is ``"fixed"``. The
    profile and field of view of the dataset are otherwise chosen from the cohort (:func:`geometry`).
    """

    select: str = "brain-mask"
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    auto_profile: bool = True  # the cohort's majority profile from the voxel sizes
    fov: str = "cohort"  # "cohort": the cohort's median extent; "slice": each slice's own (thesis); "fixed"
    seed: int = 0
    val: float = 0.14
    test: float = 0.08
    brain_fraction: float = DEFAULT_BRAIN_FRACTION
    mask_method: str = "auto"
    demographics: str | None = None

    @classmethod
    def from_options(
        cls,
        *,
        size: int = 128,
        scaling: str = "slice-minmax",
        percentiles: tuple[float, float] = (0.5, 99.5),
        skull_strip: bool = False,
        profile: str = "auto",
        fov: str = "cohort",
        fov_mm: float | None = None,
        **rest: Any,
    ) -> PrepareConfig:
        """A config from the command line's flat options (``profile="auto"``; ``fov_mm`` overrides ``fov``).

        Example:
            >>> c = PrepareConfig.from_options(size=32, fov_mm=240.0)
            >>> c.preprocessing.size, c.fov, c.auto_profile
            (32, 'fixed', True)
        """
        if profile != "auto" and profile not in PROFILES:
            raise BrainaeError(f"unknown profile {profile!r}; choose auto or one of {', '.join(PROFILES)}")
        prep = Preprocessing(
            profile="sagittal" if profile == "auto" else profile,
            size=size,
            fov_mm=fov_mm,
            scaling=scaling,
            percentiles=tuple(percentiles),
            skull_strip=skull_strip,
        )
        fov = "fixed" if fov_mm is not None else fov
        return cls(preprocessing=prep, auto_profile=profile == "auto", fov=fov, **rest)

    @property
    def skull_strip(self) -> bool:
        return self.preprocessing.skull_strip

    def check(self) -> None:
        check_method(self.select)
        if self.fov not in FOV_MODES:
            raise BrainaeError(f"unknown fov mode {self.fov!r}; choose cohort or slice")
        if self.fov == "fixed" and self.preprocessing.fov_mm is None:
            raise BrainaeError("fov 'fixed' needs a field of view in mm (--fov-mm)")
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

    def to_dict(self) -> dict:
        """The flat settings saved as ``settings.json``'s ``config`` (the layout of the command's options)."""
        p = self.preprocessing
        fixed = self.fov == "fixed"
        return {
            "select": self.select,
            "size": p.size,
            "seed": self.seed,
            "val": self.val,
            "test": self.test,
            "scaling": p.scaling,
            "profile": "auto" if self.auto_profile else p.profile,
            "fov_mm": p.fov_mm if fixed else None,
            "fov": "cohort" if fixed else self.fov,
            "brain_fraction": self.brain_fraction,
            "mask_method": self.mask_method,
            "skull_strip": p.skull_strip,
            "demographics": str(Path(self.demographics).resolve()) if self.demographics else None,
            "percentiles": list(p.percentiles),
        }


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


def _skip(skipped: list[str], name: str, message: str) -> None:
    skipped.append(name)
    warnings.warn(f"skipped {message}", BrainaeWarning, stacklevel=3)


# 1. screen -------------------------------------------------------------------------------------------------
@dataclass
class Screened:
    """Volumes that passed the screen (header facts by file, in folder order) and the names skipped."""

    headers: dict[Path, HeaderFacts]
    skipped: list[str]


def screen(files: list[Path]) -> Screened:
    """Readable 3-D headers, one volume per subject (:func:`brainae.io.read_header`, :func:`brainae.io.check_3d`);
    every other file is skipped with a warning."""
    headers: dict[Path, HeaderFacts] = {}
    skipped: list[str] = []
    for f in files:
        try:
            h = read_header(f)
            check_3d(h.shape, f)
            headers[f] = h
        except VolumeError as exc:
            _skip(skipped, f.name, str(exc))
    seen: dict[str, Path] = {}
    for f in list(headers):
        sid = subject_id(f)
        if sid in seen:
            _skip(
                skipped, f.name, f"{f.name}: same subject {sid} as {seen[sid].name} (one volume per subject)"
            )
            del headers[f]
        else:
            seen[sid] = f
    return Screened(headers, skipped)


def cohort_profile(config: PrepareConfig, headers: dict[Path, HeaderFacts]) -> str:
    """The configured profile, or the cohort's majority vote of :func:`brainae.volume.choose_profile`."""
    if not config.auto_profile:
        return config.preprocessing.profile
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
    return profile


# 2. measure ------------------------------------------------------------------------------------------------
def _loaded(f: Path, mask_method: str, skull_strip: bool):
    """(volume, brain mask or None), the volume skull-stripped when asked (the same in both passes)."""
    from brainae.brainmask import brain_mask

    vol = load_volume(f)
    mask = None if mask_method == "none" else brain_mask(vol.data, vol.zooms, mask_method)
    if skull_strip:
        vol.data = np.where(mask, vol.data, vol.data.min()).astype(np.float32)
    return vol, mask


def _measure_one(f: Path, h: HeaderFacts, profile: str, mask_method: str, skull_strip: bool):
    """One volume's slice measures (a table) and facts; or the :class:`VolumeError` that skips it."""
    import pandas as pd

    from brainae.select import slice_measures

    try:
        vol, mask = _loaded(f, mask_method, skull_strip)
    except VolumeError as exc:
        return exc
    view = to_view(vol.data, profile)
    m = slice_measures(np.asarray(view), None if mask is None else np.asarray(to_view(mask, profile)))
    spacing = in_plane_zooms(vol.zooms, profile)
    facts = dict(
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
    return table, facts


@dataclass
class Measured:
    """Every slice's measures and keep flags (``selection``), the cohort thresholds and each volume's facts."""

    selection: Any  # pandas.DataFrame
    thresholds: dict[str, float]
    facts: dict[Path, dict]


def measure(
    screened: Screened,
    profile: str,
    mask_method: str,
    config: PrepareConfig,
    *,
    workers: int = 1,
    track: Track = _no_track,
) -> Measured:
    """Load each volume, measure every slice for the three selection methods, set the cohort thresholds."""
    import pandas as pd

    from brainae.select import cohort_thresholds, keep_flags

    files = list(screened.headers)
    jobs = [(f, screened.headers[f], profile, mask_method, config.skull_strip) for f in files]
    tables, facts = [], {}
    results = _map(_measure_one, jobs, workers)
    for f, res in zip(files, track(results, description="measuring slices", total=len(files))):
        if isinstance(res, VolumeError):
            _skip(screened.skipped, f.name, str(res))
            continue
        tables.append(res[0])
        facts[f] = res[1]
    if not tables:
        raise BrainaeError(f"{files[0].parent}: no volume could be read (see warnings above)")
    selection = pd.concat(tables, ignore_index=True)
    thresholds = cohort_thresholds(selection, config.brain_fraction)
    return Measured(keep_flags(selection, thresholds), thresholds, facts)


# 3. geometry -----------------------------------------------------------------------------------------------
def geometry(config: PrepareConfig, profile: str, facts: dict[Path, dict]) -> Preprocessing:
    """The dataset's :class:`~brainae.volume.Preprocessing`: the profile and the field of view (fixed, the
    cohort's median in-plane extent, or each slice's own) added to the configured settings."""
    if config.fov == "fixed":
        fov_mm: float | None = float(config.preprocessing.fov_mm)
    elif config.fov == "cohort":
        fov_mm = float(round(np.median([v["extent"] for v in facts.values()]), 2))
    else:
        fov_mm = None
    return replace(config.preprocessing, profile=profile, fov_mm=fov_mm)


# 4. split --------------------------------------------------------------------------------------------------
def split_volumes(config: PrepareConfig, measured: Measured, skipped: list[str], demo_table: Any):
    """The volumes table (ids, demographics, split, slice counts, header facts) of the volumes that keep a
    slice; the others are skipped with a warning."""
    import pandas as pd

    from brainae.cohort import match_demographics
    from brainae.split import stratified_split

    keep_col = KEEP_COLUMN[config.select]
    kept_per_volume = measured.selection.groupby("_file")[keep_col].sum()
    used = []
    for f in measured.facts:
        if int(kept_per_volume.get(str(f), 0)) == 0:
            _skip(
                skipped,
                f.name,
                f"{f.name}: no slice passes the {config.select} selection (threshold "
                f"{measured.thresholds[config.select]:.3g}); check the image or use another --select",
            )
        else:
            used.append(f)
    if not used:
        raise BrainaeError(
            f"{next(iter(measured.facts)).parent}: no volume keeps any slice with --select {config.select}"
        )
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
    volumes["n_slices"] = [measured.facts[f]["n_slices"] for f in used]
    volumes["n_kept"] = [int(kept_per_volume.get(str(f), 0)) for f in used]
    for col in ("shape", "zooms", "axcodes", "dtype", "intensity_min", "intensity_max"):
        volumes[col] = [measured.facts[f][col] for f in used]
    volumes["_file"] = [str(f) for f in used]
    return volumes


# 5. write --------------------------------------------------------------------------------------------------
def _slices_one(f: Path, prep: Preprocessing, mask_method: str, keep: np.ndarray):
    """The kept slices of one volume, their scale ranges and thumbnails of all its slices."""
    from brainae.volume import volume_to_slices

    vol, _ = _loaded(f, mask_method if prep.skull_strip else "none", prep.skull_strip)
    stack = volume_to_slices(vol.data, vol.zooms, prep)
    step = max(prep.size // 48, 1)
    return stack.images[keep], stack.lo[keep], stack.hi[keep], stack.images[:, ::step, ::step]


def write_slices(
    tmp: Path,
    volumes: Any,
    measured: Measured,
    prep: Preprocessing,
    config: PrepareConfig,
    mask_method: str,
    *,
    workers: int = 1,
    track: Track = _no_track,
):
    """``slices.npy`` (the kept slices of every volume, in volume order) and its index; also the montage
    inputs of the first two volumes."""
    import pandas as pd

    keep_col = KEEP_COLUMN[config.select]
    n_total = int(volumes["n_kept"].sum())
    arr = np.lib.format.open_memmap(
        tmp / "slices.npy", mode="w+", dtype=np.float32, shape=(n_total, prep.size, prep.size)
    )
    sels = [
        measured.selection[measured.selection["_file"] == f].sort_values("slice") for f in volumes["_file"]
    ]
    jobs = [(Path(f), prep, mask_method, sel[keep_col].to_numpy()) for f, sel in zip(volumes["_file"], sels)]
    index_parts, montage_inputs, pos = [], [], 0
    results = _map(_slices_one, jobs, workers)
    rows = zip(volumes["volume_id"], volumes["split"], sels, jobs)
    for (vid, split, sel, job), res in zip(
        rows, track(results, description="writing slices", total=len(jobs))
    ):
        images, lo, hi, thumbs = res
        keep = job[3]
        arr[pos : pos + len(images)] = images
        pos += len(images)
        part = sel.loc[keep, ["volume_id", "slice", "brain_frac", "nonzero_frac", "nonzero_mean"]].copy()
        part.insert(2, "split", split)
        part["scale_lo"], part["scale_hi"] = lo, hi
        index_parts.append(part)
        if len(montage_inputs) < 2:
            montage_inputs.append((vid, thumbs, sel))
    arr.flush()
    del arr
    return pd.concat(index_parts, ignore_index=True), montage_inputs


def _run_quiet(func: Callable, args: tuple):
    """``func(*args)`` in a worker, with the warnings it raised (re-emitted in order by the parent)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = func(*args)
    return result, [(str(w.message), w.category) for w in caught]


def _map(func: Callable, jobs: list[tuple], workers: int) -> Iterator[Any]:
    """``func(*job)`` for each job, in order: in this process, or in a pool of ``workers`` processes.

    The results do not depend on ``workers``: each volume is processed by the same function alone.
    """
    if workers <= 1 or len(jobs) <= 1:
        yield from (func(*job) for job in jobs)
        return
    from brainae.workers import process_pool

    # one torch thread per process: the pool gives the parallelism, more threads would oversubscribe
    with process_pool(workers, threads=1) as ex:
        pending: deque = deque()
        todo = iter(jobs)
        for job in itertools.islice(todo, 2 * workers):  # a bounded window: memory does not grow with N
            pending.append(ex.submit(_run_quiet, func, job))
        while pending:
            result, caught = pending.popleft().result()
            for job in itertools.islice(todo, 1):
                pending.append(ex.submit(_run_quiet, func, job))
            for message, category in caught:
                warnings.warn(message, category, stacklevel=2)
            yield result


def _reusable(out: Path, probe: dict) -> PrepareResult | None:
    """The existing dataset in ``out`` when it was made with the same settings and inputs."""
    import pandas as pd

    old = out / "settings.json"
    if not (out.is_dir() and old.is_file() and (out / "slices.npy").is_file()):
        return None
    try:
        previous = json.loads(old.read_text())
    except ValueError:
        return None
    if _settings_key(previous) != _settings_key(probe):
        return None
    idx = pd.read_csv(out / "index.csv")
    n_volumes = int(previous.get("n_volumes", 0))
    return PrepareResult(out, n_volumes, len(idx), idx["split"].value_counts().to_dict(), [], reused=True)


def _check_out(out: Path, folder: Path, config: PrepareConfig, force: bool) -> None:
    try:
        check_output(out, "dataset", [folder, config.demographics], force=force)
    except BrainaeError as exc:
        if force or read_marker(out) is None:
            raise
        raise BrainaeError(
            f"{out}: exists with other settings or inputs; add --force to replace it, or choose another --out"
        ) from exc


def _bids_participants(folder: Path, config: PrepareConfig) -> PrepareConfig:
    """A BIDS dataset's ``participants.tsv`` as the demographics, when none were given."""
    import dataclasses

    from brainae.bids import is_bids, participants

    if config.demographics is None and is_bids(folder) and (tsv := participants(folder)) is not None:
        return dataclasses.replace(config, demographics=str(tsv))
    return config


def prepare(
    folder: str | os.PathLike,
    out: str | os.PathLike,
    config: PrepareConfig | None = None,
    *,
    force: bool = False,
    workers: int = 1,
    track: Track = _no_track,
) -> PrepareResult:
    """Make the prepared dataset folder ``out`` from the NIfTI volumes in ``folder``. See the module doc.

    ``workers`` > 1 loads and resamples volumes in that many processes; the dataset is byte-identical to a
    one-process run (each volume is processed alone, results are gathered in folder order).
    """
    from brainae.brainmask import resolve_method
    from brainae.cohort import read_demographics

    config = config or PrepareConfig()
    config.check()
    if workers < 1:
        raise BrainaeError(f"--workers {workers}: must be at least 1")
    folder, out = Path(folder), Path(out)
    files = input_files(folder)
    config = _bids_participants(folder, config)
    check_not_input(out, [folder, config.demographics], "output folder")
    demo_table = read_demographics(config.demographics) if config.demographics else None
    probe = {"config": config.to_dict(), "inputs": _fingerprint(files)}
    if not force and (reused := _reusable(out, probe)) is not None:
        return reused
    _check_out(out, folder, config, force)

    screened = screen(files)
    if not screened.headers:
        raise BrainaeError(
            f"{folder}: no usable 3-D volume among {len(files)} NIfTI files (see warnings above)"
        )
    mask_method = "none" if config.mask_method == "none" else resolve_method(config.mask_method)
    profile = cohort_profile(config, screened.headers)
    measured = measure(screened, profile, mask_method, config, workers=workers, track=track)
    prep = geometry(config, profile, measured.facts)
    volumes = split_volumes(config, measured, screened.skipped, demo_table)
    with atomic_dir(out) as tmp:
        index, montage = write_slices(
            tmp, volumes, measured, prep, config, mask_method, workers=workers, track=track
        )
        volumes = volumes.drop(columns=["_file"])
        _write_tables(tmp, index, volumes, measured.selection)
        settings = {
            "version": __version__,
            "preprocessing": prep.to_dict(),
            "select": _select_settings(config, measured, mask_method),
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
            "n_volumes": len(volumes),
            "skipped": screened.skipped,
            **probe,
        }
        (tmp / "settings.json").write_text(json.dumps(settings, indent=2, default=str))
        _write_figures(tmp, measured.selection, measured.thresholds, volumes, montage)
        write_marker(tmp, "dataset")
    splits = index["split"].value_counts().to_dict()
    return PrepareResult(out, len(volumes), len(index), splits, screened.skipped)


def _select_settings(config: PrepareConfig, measured: Measured, mask_method: str) -> dict:
    sel = measured.selection
    return {
        "method": config.select,
        "thresholds": measured.thresholds,
        "brain_fraction": config.brain_fraction,
        "mask_method": mask_method,
        "kept_by_method": {m: int(sel[KEEP_COLUMN[m]].sum()) for m in METHODS},
        "slices_total": len(sel),
    }


def _write_tables(tmp: Path, index, volumes, selection) -> None:
    from brainae.split import split_table

    index.to_csv(tmp / "index.csv", index=False)
    volumes.to_csv(tmp / "volumes.csv", index=False)
    selection.drop(columns=["_file"]).to_csv(tmp / "selection.csv", index=False)
    split_table(volumes).to_csv(tmp / "split.csv", index=False)


def _write_figures(out: Path, selection, thresholds, volumes, montage_inputs) -> None:
    from brainae.figures import selection_counts_figure, selection_montage_figure, split_figure

    figs = out / "figures"
    figs.mkdir(exist_ok=True)
    selection_counts_figure(selection, thresholds, figs / "selection_counts.png")
    selection_montage_figure(montage_inputs, figs / "selection_montage.png")
    split_figure(volumes, figs / "split.png")
