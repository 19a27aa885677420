"""Commands of stage 10: ``denoise``, ``inpaint``, ``reconstruct``, ``anomaly``.

Each takes a NIfTI file or a folder of them and writes results on the input's grid with its affine and
header. ``denoise``, ``inpaint`` and ``anomaly`` use brainae's shipped default for the job (for ``inpaint`` the
atlas, :mod:`brainae.atlas`) unless ``--model`` names another: a shipped model by name (``denoise``, ``atlas``,
``inpaint``, ``anomaly``, ``thesis``), a checkpoint file (volumetric from ``brainae fit``, or a slice
autoencoder from ``brainae train`` / ``import-keras``), an atlas ``.npz`` (``inpaint``), or a thesis Keras
``.h5`` file. ``reconstruct`` needs a slice autoencoder. Outputs are never
overwritten without ``--force`` and inputs are never written.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated

import typer

from brainae.cli._app import command, console, track

ModelOpt = Annotated[
    Path, typer.Option("--model", "-m", help="Checkpoint (.safetensors from brainae train / import-keras).")
]
JobModelOpt = Annotated[
    str | None,
    typer.Option(
        "--model",
        "-m",
        help="Model: a checkpoint file, or a shipped one by name: denoise, inpaint, anomaly (brainae's "
        "defaults) or thesis (the thesis's slice autoencoder). Default: brainae's model for this job.",
    ),
]
DeviceOpt = Annotated[
    str,
    typer.Option(
        "--device",
        help="auto (CUDA when available, else CPU), cpu, cuda or cuda:N. (train and grid take Lightning's "
        "--accelerator/--devices instead.)",
    ),
]
BatchOpt = Annotated[int, typer.Option("--batch-size", min=1, help="Slices per forward pass.")]
WorkersOpt = Annotated[
    int,
    typer.Option(
        "--workers",
        min=1,
        help="For a folder IN on the CPU: volumes in this many processes, sharing the cores (outputs equal "
        "those of 1 process up to float rounding; little gain when the model already uses every core).",
    ),
]
ForceOpt = Annotated[bool, typer.Option("--force", help="Overwrite existing outputs.")]
BidsOutOpt = Annotated[
    Path | None,
    typer.Option(
        "--bids-out",
        help="Write BIDS derivatives to this folder: sub-*/[ses-*/]anat/<scan>_desc-<job>_T1w.nii.gz with a "
        "JSON sidecar each, and dataset_description.json. A BIDS dataset IN gets them without it, in OUT or "
        "IN/derivatives/brainae.",
        show_default=False,
    ),
]
ShardOpt = Annotated[
    str | None,
    typer.Option(
        "--shard",
        help="K/N: only job K of N's share of a folder or BIDS dataset (every N-th scan of the sorted list, "
        "from the K-th), for cluster job arrays (docs/slurm.md). With --shard or BIDS, each scan's outputs "
        "are written as soon as it is done, scans whose outputs are all there are skipped (a rerun "
        "continues; --force redoes them), and a summary line is printed.",
        show_default=False,
    ),
]
ViewOpt = Annotated[
    Path | None,
    typer.Option(
        "--view",
        help="Also write an HTML page with an interactive 3-D view of IN and the result (as brainae view "
        "does); one input file only.",
        show_default=False,
    ),
]
FracOpt = Annotated[
    float | None,
    typer.Option(
        "--min-brain-frac",
        help="Process only slices whose brain fraction is above this (default: the slice selection the "
        "checkpoint's dataset used; 0 processes every slice).",
    ),
]
MaskMethodOpt = Annotated[
    str | None,
    typer.Option(
        "--mask-method",
        help="Brain mask: threshold, deepbet or auto. Slice autoencoders: for slice selection (default: as "
        "their dataset); brainae's anomaly model: for skull stripping (default: deepbet).",
    ),
]


def _load_model(path: Path, device: str):
    from brainae.apply import load_applicable

    return load_applicable(path, device)


def _job_model(model: str | None, task: str, device: str):
    """("volumetric", VolumetricModel), ("normative", NormativeModel) or ("slice", (model, prep, normative))
    for a job's ``--model`` (the default of ``anomaly`` is the normative model)."""
    from brainae.cli.volumetric import resolve_model_name
    from brainae.errors import BrainaeError
    from brainae.infer import is_volumetric, load_volumetric
    from brainae.normative import is_normative_file, load_normative

    default = "normative" if task == "anomaly" else task
    path = resolve_model_name(model if model is not None else default)
    if is_normative_file(path):
        if task != "anomaly":
            raise BrainaeError(
                f"{path.name}: a normative model makes anomaly maps; use `brainae anomaly`, or give a {task} model"
            )
        return "normative", load_normative(path)
    if path.suffix.lower() == ".npz":
        raise BrainaeError(
            f"{model or path}: an inpainting atlas, which only `brainae inpaint` uses; {task} needs a model for "
            f"{task}: leave --model out (brainae's {task} model) or give a checkpoint from `brainae fit {task}`"
        )
    if path.suffix.lower() in (".h5", ".hdf5", ".keras"):
        return "slice", _load_model(path, device)
    from brainae.checkpoint import read_checkpoint

    if path.is_file() and is_volumetric(read_checkpoint(path, weights=False).preprocessing):
        return "volumetric", load_volumetric(path, task=task, device=device)
    return "slice", _load_model(path, device)


def _check_output(out: Path, inputs: list, force: bool) -> None:
    """Refuse an output NIfTI before any work: not a NIfTI name, an input (scan, mask, brain mask, model,
    data folder: :func:`brainae.io.check_output_file`), or an existing file that brainae did not write."""
    from brainae.errors import BrainaeError
    from brainae.io import check_output_file, is_nifti, written_by_brainae

    if not is_nifti(out):
        raise BrainaeError(f"{out}: outputs are NIfTI files; end the name with .nii.gz or .nii")
    check_output_file(
        out,
        inputs,
        force=force,
        is_ours=written_by_brainae,
        what="written by brainae (its header has no brainae mark)",
        option="output",
    )


def _pairs(inp: Path, out: Path, force: bool, inputs: list | None = None) -> list[tuple[Path, Path]]:
    """(input, output) files for a file or a folder of files; every output checked before any work against
    every input of the command (``inputs``: masks, brain masks, the model; IN and its files are added)."""
    from brainae.errors import BrainaeError
    from brainae.io import list_niftis

    if inp.is_dir():
        if out.exists() and not out.is_dir():
            raise BrainaeError(f"{out}: is a file; with a folder of inputs, OUT must be a folder")
        files = list_niftis(inp)
        pairs = [(f, out / f.name) for f in files]
    else:
        if not inp.exists():
            raise BrainaeError(f"{inp}: no such file or folder; check the path")
        target = out / inp.name if out.is_dir() else out
        pairs = [(inp, target)]
    for src, dst in pairs:  # IN covers its files (an output lying inside it); src: a link to it
        _check_output(dst, [inp, src, *(inputs or [])], force)
    return pairs


def _model_input(model: str | None, task: str) -> Path | None:
    """The file behind ``--model`` (a shipped model by name or a path), as one of the command's inputs."""
    from brainae.cli.volumetric import resolve_model_name
    from brainae.errors import BrainaeError

    if model == "biharmonic":
        return None
    try:
        return resolve_model_name(model if model is not None else "normative" if task == "anomaly" else task)
    except BrainaeError:
        return None  # reported when the model is loaded


class _Outputs:
    """All outputs of one command, or none: each is written beside its destination under a brainae temporary
    name (:func:`brainae.io.stage_like`), checked for NaN/Inf, and all are renamed into place only once every
    input has been processed (:func:`brainae.io.publish`: without ``force`` an output that another run created
    meanwhile is never replaced)."""

    def __init__(self, force: bool = False) -> None:
        self.force = force
        self.staged: list[tuple[Path, Path]] = []
        self.created: list[Path] = []

    def save(self, dst: Path, data, like) -> None:
        import numpy as np

        from brainae.errors import BrainaeError
        from brainae.io import stage_like, write_error

        if not np.isfinite(data).all():
            raise BrainaeError(
                f"{like.path}: the model produced {int((~np.isfinite(data)).sum())} NaN/Inf voxels; nothing was "
                "written: check the checkpoint (a diverged training) or the input's intensities"
            )
        if any(d == dst for _, d in self.staged):
            raise BrainaeError(f"{dst}: named for two outputs of this command; give each output its own file")
        if not dst.parent.exists():
            missing = [q for q in [dst.parent, *dst.parent.parents] if not q.exists()]
            self.created.extend(missing)
            try:
                dst.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise write_error(dst, exc) from None  # type: ignore[misc]
        self.staged.append((stage_like(dst, data, like), dst))

    def save_bytes(self, dst: Path, data: bytes) -> None:
        """Stage a small file (a JSON sidecar) as :meth:`save` stages a volume (a brainae temporary)."""
        from brainae.io import remove_stale_temporaries, temp_file, write_error

        try:
            if not dst.parent.exists():
                self.created.extend(q for q in [dst.parent, *dst.parent.parents] if not q.exists())
                dst.parent.mkdir(parents=True, exist_ok=True)
            remove_stale_temporaries(dst)
            tmp = temp_file(dst)
            tmp.write_bytes(data)
        except OSError as exc:
            raise write_error(dst, exc) from None  # type: ignore[misc]
        self.staged.append((tmp, dst))

    def commit(self) -> None:
        """Rename what is staged so far into place, in the order it was staged (cohort mode: after each scan)."""
        import os

        for tmp, dst in self.staged:
            os.replace(tmp, dst)
        self.staged.clear()
        self.created.clear()

    def __enter__(self) -> _Outputs:
        return self

    def __exit__(self, kind, exc, tb) -> None:
        import contextlib

        from brainae.errors import BrainaeError
        from brainae.io import clobbered, publish, write_error

        published: list[Path] = []
        if exc is None:
            try:
                if not self.force:
                    for _, dst in self.staged:  # another run's output appeared meanwhile: write none
                        if dst.exists() or dst.is_symlink():
                            raise clobbered(dst)
                for tmp, dst in self.staged:
                    publish(tmp, dst, replace=self.force)
                    published.append(dst)
                return
            except (OSError, BrainaeError) as err:
                exc = write_error(dst, err) or err
                if not self.force:  # all or nothing: take back what this run put in place
                    for done in published:
                        with contextlib.suppress(OSError):
                            done.unlink()
        for tmp, _ in self.staged:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
        for folder in sorted(set(self.created), key=lambda q: len(q.parts), reverse=True):
            with contextlib.suppress(OSError):
                folder.rmdir()  # only folders this command created, and only when empty
        if kind is None and exc is not None:
            raise exc


def _check_view(view: Path | None, inp: Path, force: bool, inputs: list | None = None) -> None:
    """Refuse a ``--view`` page before any work (a folder IN, a bad or existing path, one of ``inputs``)."""
    from brainae.errors import BrainaeError
    from brainae.view import check_view_output

    if view is None:
        return
    if inp.is_dir():
        raise BrainaeError(
            f"{inp}: --view shows one volume; give one input file, or run brainae view afterwards"
        )
    check_view_output(view, [inp, *(p for p in inputs or [] if p is not None)], force=force)


def _write_view(view: Path | None, vol, results: list, *, mode: str, title: str) -> str | None:
    """Write the ``--view`` page of ``vol`` and ``results`` ((name, RAS array, threshold, visible)...)."""
    if view is None:
        return None
    from brainae.view import layer, write_view

    others = [layer(vol, name, data=data, threshold=thr, visible=vis) for name, data, thr, vis in results]
    summary = write_view(view, layer(vol), others, mode=mode, title=title)
    return f"{summary.path}: 3-D view ({summary.bytes / 1e6:.1f} MB)"


def _view_beside(view: Path, vol, name: str, data, title: str) -> str | None:
    """The ``--view`` page of a job's result ``data`` (named ``name``) beside its input ``vol``."""
    return _write_view(view, vol, [(name, data, None, True)], mode="beside", title=title)


def _print(lines: list) -> None:
    """Print a job's report lines, one per output (after the outputs are in place)."""
    for line in lines:
        console.print(line)


def _iterate(pairs: list, what: str):
    return track(pairs, description=what) if len(pairs) > 1 else iter(pairs)


_JOB = None  # the job of the running _each (inherited by its forked worker processes)


def _run_job(pair: tuple) -> object:
    return _JOB(*pair)


_NAMES_A_FILE = re.compile(r"\.(nii|nii\.gz|safetensors|npz|h5|hdf5|keras|json)\b", re.IGNORECASE)


def _naming(job):
    """``job`` whose errors name the input file they came from (library errors about an array, such as "the
    volume is constant", do not know it)."""
    from brainae.errors import BrainaeError

    def run(src: Path, dst) -> object:
        try:
            return job(src, dst)
        except BrainaeError as exc:
            text = str(exc)
            if str(src) in text or src.name in text or _NAMES_A_FILE.search(text):
                raise  # it names the scan, or another file (a mask, a model) already
            raise BrainaeError(f"{src}: {text}") from None

    return run


def _each(pairs: list, what: str, workers: int, device: str, job):
    """``(src, dst, job(src, dst))`` for each pair, in order, with progress.

    With ``workers > 1``, a folder and the CPU, the jobs run in that many forked processes
    (:func:`brainae.workers.process_pool`: they die with this process, and their errors come back intact),
    which share the cores (``torch`` threads = cores // workers); each volume is processed alone by the same
    code, so the outputs depend on ``workers`` only through the float rounding of torch's multi-threaded
    kernels (measured on 2 mm IXI volumes: 1e-7 of the volume's maximum). The outputs are still written here,
    by :class:`_Outputs`.
    """
    global _JOB
    job = _naming(job)
    if workers <= 1 or len(pairs) < 2 or not str(device).startswith(("cpu", "auto")) or _cuda():
        for src, dst in _iterate(pairs, what):
            yield src, dst, job(src, dst)
        return
    import os

    from brainae.workers import process_pool

    _JOB = job
    threads = max(1, (os.cpu_count() or 1) // workers)
    try:
        with process_pool(workers, threads=threads) as ex:
            results = ex.map(_run_job, pairs)
            for (src, dst), result in zip(_iterate(pairs, what), results):
                yield src, dst, result
    finally:
        _JOB = None


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _selection(min_brain_frac: float | None, mask_method: str | None, normative):
    """The checkpoint's slice selection, with the command-line overrides (:func:`brainae.apply.resolve_selection`)."""
    from brainae.apply import resolve_selection
    from brainae.slice_anomaly import selection_from

    return resolve_selection(
        selection_from(normative), min_brain_frac=min_brain_frac, mask_method=mask_method
    )


def _describe(sel) -> str:
    return "every slice" if sel is None else f"{sel.method} measure above {sel.threshold:.3g}"


def _run_simple(
    kind: str,
    inp,
    out,
    loaded,
    device,
    batch_size,
    force,
    min_brain_frac,
    mask_method,
    view=None,
    workers=1,
    cohort=None,
    model_name=None,
    inputs=None,
) -> None:
    """denoise / reconstruct with a slice autoencoder; ``loaded`` is (model, prep, normative); ``inputs``: the
    command's other inputs (the model file)."""
    from brainae.apply import denoise, reconstruct
    from brainae.cli import _cohort
    from brainae.io import load_volume

    pairs = cohort.pairs if cohort is not None else _pairs(inp, out, force, inputs)
    model, prep, normative = loaded
    sel = _selection(min_brain_frac, mask_method, normative)
    func = denoise if kind == "denoise" else reconstruct
    lines = []

    def job(src: Path, _dst: Path) -> tuple:
        vol = load_volume(src)
        return vol, func(vol, model, prep, batch_size=batch_size, device=device, selection=sel)

    with _Outputs(force) as outputs:
        for src, dst, (vol, res) in _each(pairs, kind, workers, device, job):  # noqa: B007 (src: the view)
            outputs.save(dst, res.data, vol)
            lines.append(
                f"{dst}: {res.n_processed} slices through the model, {res.n_passed} passed through unchanged "
                f"(selection: {_describe(sel)})"
            )
            if cohort is not None:
                settings = {"device": device, "selection": _describe(sel), "batch_size": batch_size}
                cohort.done(outputs, src, _cohort.sidecar(None, model_name, settings))
        if view is not None:
            lines.append(_view_beside(view, vol, kind + "d", res.data, f"{src.name}: {kind}"))
    _print(lines)
    if cohort is not None:
        console.print(cohort.summary())


@command("denoise")
def denoise_cmd(
    inp: Annotated[Path, typer.Argument(metavar="IN", help="NIfTI file or folder of NIfTI files.")],
    out: Annotated[
        Path | None,
        typer.Argument(
            metavar="OUT",
            help="Output NIfTI file (a folder for a folder IN; for a BIDS dataset IN, the derivatives folder, "
            "default IN/derivatives/brainae).",
        ),
    ] = None,
    model: JobModelOpt = None,
    device: DeviceOpt = "auto",
    batch_size: BatchOpt = 64,
    force: ForceOpt = False,
    min_brain_frac: FracOpt = None,
    mask_method: MaskMethodOpt = None,
    view: ViewOpt = None,
    workers: WorkersOpt = 1,
    bids_out: BidsOutOpt = None,
    shard: ShardOpt = None,
) -> None:
    """Denoise a T1 volume (Gaussian / Rician noise of any level; written on the input's grid and header).

    The default model is brainae's 3-D denoiser: it runs on the input's own voxel grid, estimates the noise
    level from the scan itself, mixes the network's output with 3-D non-local means and other classical
    estimates of the scan in the shares calibrated for that noise level, and leaves an already clean scan
    (nearly) as it is. A scan with air around the head and voxels under 8 mm^3 (2 mm cubed) keeps the noise
    such a scan carries of its own (about 2 % of its intensity scale at 1 mm); a skull-stripped scan finer
    than 1.5 mm gets its strength per scan (Stein's unbiased risk estimate) and loses its own noise too.

    IN may be a BIDS dataset: its *_T1w scans are denoised into BIDS derivatives (OUT, --bids-out, or
    IN/derivatives/brainae) with a JSON sidecar each. --shard K/N splits a folder or a dataset between jobs.
    """
    from brainae.cli import _cohort
    from brainae.errors import BrainaeError
    from brainae.infer import denoise_volume
    from brainae.io import load_volume

    inputs = [_model_input(model, "denoise")]
    _check_view(view, inp, force, inputs)
    cohort = _cohort.plan(inp, out, job="denoise", bids_out=bids_out, shard=shard, force=force)
    if cohort is None and out is None:
        raise BrainaeError("OUT: give the output file (a folder for a folder IN)")
    kind, loaded = _job_model(model, "denoise", device)
    if kind == "slice":
        _run_simple(
            "denoise",
            inp,
            out,
            loaded,
            device,
            batch_size,
            force,
            min_brain_frac,
            mask_method,
            view,
            workers,
            cohort,
            model or "denoise",
            inputs,
        )
        return
    pairs = cohort.pairs if cohort is not None else _pairs(inp, out, force, inputs)
    lines = []

    def job(src: Path, _dst: Path) -> tuple:
        vol = load_volume(src)
        return vol, denoise_volume(vol, loaded, device=device)

    with _Outputs(force) as outputs:
        for src, dst, (vol, result) in _each(pairs, "denoise", workers, device, job):  # noqa: B007
            outputs.save(dst, result, vol)
            lines.append(f"{dst}: denoised with {loaded.name}")
            if cohort is not None:
                cohort.done(outputs, src, _cohort.sidecar(loaded, model, {"device": device}))
        if view is not None:
            lines.append(
                _view_beside(view, vol, "denoised", result, f"{src.name}: denoised with {loaded.name}")
            )
    _print(lines)
    if cohort is not None:
        console.print(cohort.summary())


@command("reconstruct")
def reconstruct_cmd(
    inp: Annotated[Path, typer.Argument(metavar="IN", help="NIfTI file or folder of NIfTI files.")],
    out: Annotated[Path, typer.Argument(metavar="OUT", help="Output NIfTI file (a folder for a folder IN).")],
    model: Annotated[
        str,
        typer.Option("--model", "-m", help="Slice autoencoder: a checkpoint, a thesis .h5, or 'thesis'."),
    ],
    device: DeviceOpt = "auto",
    batch_size: BatchOpt = 64,
    force: ForceOpt = False,
    min_brain_frac: FracOpt = None,
    mask_method: MaskMethodOpt = None,
    workers: WorkersOpt = 1,
) -> None:
    """Write a slice autoencoder's reconstruction of a T1 volume (slices with little brain pass through)."""
    from brainae.cli.volumetric import resolve_model_name
    from brainae.errors import BrainaeError
    from brainae.infer import is_volumetric

    path = resolve_model_name(model)
    if path.suffix.lower() == ".npz":
        raise BrainaeError(
            f"{model}: an inpainting atlas, which only `brainae inpaint` uses; reconstruct needs a slice "
            "autoencoder (e.g. --model thesis)"
        )
    if path.suffix.lower() == ".safetensors" and path.is_file():
        from brainae.checkpoint import read_checkpoint

        card = read_checkpoint(path, weights=False).preprocessing
        if is_volumetric(card):
            raise BrainaeError(
                f"{path.name}: a volumetric model for {card.task}; "
                "reconstruct needs a slice autoencoder (e.g. --model thesis)"
            )
    loaded = _load_model(path, device)
    _run_simple(
        "reconstruct",
        inp,
        out,
        loaded,
        device,
        batch_size,
        force,
        min_brain_frac,
        mask_method,
        None,
        workers,
        inputs=[path],
    )


def _load_mask(mask_path: Path, vol):

    from brainae.io import check_same_grid, load_volume

    mask = load_volume(mask_path)
    check_same_grid(mask, vol, "mask")
    return mask.data != 0


@command("inpaint")
def inpaint_cmd(
    inp: Annotated[Path, typer.Argument(metavar="IN", help="NIfTI file or folder of NIfTI files.")],
    mask: Annotated[
        Path,
        typer.Argument(
            metavar="MASK",
            help="Mask NIfTI (non-zero = fill) on IN's grid; for a folder IN, one "
            "mask for all or a folder of masks with the same file names.",
        ),
    ],
    out: Annotated[
        Path | None,
        typer.Argument(
            metavar="OUT",
            help="Output NIfTI file (a folder for a folder IN; for a BIDS dataset IN, the derivatives folder, "
            "default IN/derivatives/brainae).",
        ),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            "-m",
            help="Model: 'atlas' (the default: biharmonic fill plus detail from matching regions of healthy "
            "brains), an atlas .npz, 'inpaint' (brainae's 3-D inpainting network) or a checkpoint file, 'thesis' "
            "(the thesis's slice autoencoder) or 'biharmonic' (classical biharmonic fill, scikit-image).",
        ),
    ] = None,
    device: DeviceOpt = "auto",
    batch_size: BatchOpt = 64,
    force: ForceOpt = False,
    view: ViewOpt = None,
    workers: WorkersOpt = 1,
    bids_out: BidsOutOpt = None,
    shard: ShardOpt = None,
) -> None:
    """Fill the masked voxels; every other voxel stays exactly as in the input.

    The default is brainae's inpainting atlas (works with and without skull, any voxel size): the biharmonic
    fill of each masked region plus the detail that healthy brains show at the same place (20 IXI volumes
    registered to the scan; the regions whose surroundings match the hole's best, combined). See
    `brainae info atlas`.

    IN may be a BIDS dataset (MASK: one mask, or a folder with each mask at its scan's path relative to IN,
    e.g. sub-01/anat/sub-01_T1w.nii.gz): results as BIDS derivatives, desc-inpainted_T1w with a JSON sidecar.
    --shard K/N splits a folder or a dataset between jobs.
    """
    from brainae.apply import inpaint
    from brainae.cli import _cohort
    from brainae.errors import BrainaeError
    from brainae.infer import inpaint_volume
    from brainae.io import load_volume

    inputs = [mask, _model_input(model, "atlas")]
    _check_view(view, inp, force, inputs)
    cohort = _cohort.plan(inp, out, job="inpaint", bids_out=bids_out, shard=shard, force=force)
    if cohort is None and out is None:
        raise BrainaeError("OUT: give the output file (a folder for a folder IN)")
    pairs = cohort.pairs if cohort is not None else _pairs(inp, out, force, inputs)
    masks = {}
    for src, _ in pairs:
        rel = (
            src.relative_to(inp)
            if cohort is not None and cohort.bids and src.is_relative_to(inp)
            else src.name
        )
        m = mask / rel if mask.is_dir() else mask
        if not m.exists():
            raise BrainaeError(f"{m}: no such mask file; give a mask NIfTI on the volume's grid")
        masks[src] = m
    if model == "biharmonic":
        kind, loaded = "biharmonic", None
    elif model is None or model == "atlas" or model.lower().endswith(".npz"):
        from brainae.atlas import load_atlas
        from brainae.cli.volumetric import resolve_model_name

        kind, loaded = "atlas", load_atlas(resolve_model_name(model or "atlas"))
    else:
        kind, loaded = _job_model(model, "inpaint", device)
    lines = []

    def job(src: Path, dst: Path) -> tuple:
        """(volume, filled data, the output's line)."""
        vol = load_volume(src)
        m = _load_mask(masks[src], vol)
        if m.all():
            raise BrainaeError(
                f"{masks[src]}: the mask covers every voxel of {src.name}: nothing is left to fill from; "
                "give a mask of only the region to fill"
            )
        if kind == "biharmonic":
            from brainae.baselines import biharmonic_inpaint

            return vol, biharmonic_inpaint(vol.data, m), f"{dst}: {int(m.sum())} voxels filled (biharmonic)"
        if kind == "atlas":
            from brainae.atlas import inpaint_with_atlas

            filled = inpaint_with_atlas(vol, m, loaded)
            return vol, filled, f"{dst}: {int(m.sum())} voxels filled (atlas)"
        if kind == "volumetric":
            filled = inpaint_volume(vol, m, loaded, device=device)
            return vol, filled, f"{dst}: {int(m.sum())} voxels filled with {loaded.name}"
        model_, prep, _ = loaded
        res = inpaint(vol, m, model_, prep, batch_size=batch_size, device=device)
        left = int(m.sum() - res.inside.sum())
        note = f", {left} outside the field of view kept" if left else ""
        return vol, res.data, f"{dst}: {int(res.inside.sum())} voxels filled{note}"

    with _Outputs(force) as outputs:
        for src, dst, (vol, filled, line) in _each(pairs, "inpaint", workers, device, job):  # noqa: B007
            outputs.save(dst, filled, vol)
            lines.append(line)
            if cohort is not None:
                settings = {"device": device, "mask": str(masks[src])}
                cohort.done(outputs, src, _cohort.sidecar(loaded, model or "atlas", settings))
        if view is not None:
            lines.append(_view_beside(view, vol, "inpainted", filled, f"{src.name}: inpainted"))
    _print(lines)
    if cohort is not None:
        console.print(cohort.summary())


@command("anomaly")
def anomaly_cmd(
    inp: Annotated[Path, typer.Argument(metavar="IN", help="NIfTI file or folder of NIfTI files.")],
    model: JobModelOpt = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Residual map NIfTI (a folder for a folder IN); optional."),
    ] = None,
    calibrated: Annotated[
        Path | None,
        typer.Option(
            "--calibrated",
            help="Calibrated map NIfTI: -log10 of the share of healthy brain voxels with a residual at least "
            "as high (2 = 1 %); brainae models only.",
        ),
    ] = None,
    lesion_mask: Annotated[
        Path | None,
        typer.Option(
            "--lesion-mask", help="Binary lesion mask NIfTI at the --fpr threshold; brainae models only."
        ),
    ] = None,
    brain_mask: Annotated[
        Path | None,
        typer.Option(
            "--brain-mask",
            help="Brain mask NIfTI on IN's grid (a folder of masks named as the inputs for a folder IN); "
            "default: IN is used as it is when already skull-stripped, else it is stripped.",
        ),
    ] = None,
    fpr: Annotated[
        float,
        typer.Option(
            "--fpr", min=1e-6, max=0.5, help="False-positive rate on healthy brain voxels for --lesion-mask."
        ),
    ] = 0.01,
    as_json: Annotated[bool, typer.Option("--json", help="Print the scores as JSON only.")] = False,
    signed: Annotated[
        bool, typer.Option("--signed", help="Slice autoencoders: map x - recon instead of |x - recon|.")
    ] = False,
    device: DeviceOpt = "auto",
    batch_size: BatchOpt = 64,
    force: ForceOpt = False,
    min_brain_frac: FracOpt = None,
    mask_method: MaskMethodOpt = None,
    view: Annotated[
        Path | None,
        typer.Option(
            "--view",
            help="Also write an HTML page with an interactive 3-D view of IN with the anomaly map as a colour "
            "overlay and a threshold slider (as brainae view --mode overlay); one input file only.",
            show_default=False,
        ),
    ] = None,
    workers: WorkersOpt = 1,
    bids_out: BidsOutOpt = None,
    shard: ShardOpt = None,
) -> None:
    """Anomaly maps of a T1 scan and its anomaly score with a z-score against healthy volumes.

    The default model is brainae's normative model of healthy anatomy: the scan is registered (ANTs affine +
    coarse SyN) to a symmetric template of healthy IXI brains and compared voxel by voxel with them (intensity
    against the healthy mean and sd at that place, left-right asymmetry, local swelling); the map is that
    score inside the brain (zero outside). --model anomaly gives the earlier map, |x - f(x)| of a
    coarse-noise denoising autoencoder. --calibrated and --lesion-mask give maps that mean the same on every
    scan (calibrated on healthy validation volumes). A scan with its skull is skull-stripped first (deepbet
    when installed); a skull-stripped scan is used as it is.

    IN may be a BIDS dataset: every *_T1w scan gets its maps as BIDS derivatives (--bids-out, default
    IN/derivatives/brainae): desc-anomaly_T1w, desc-anomalycalibrated_T1w and desc-anomaly_mask, with JSON
    sidecars holding the scores. --shard K/N splits a folder or a dataset between jobs.
    """
    from brainae.cli import _cohort
    from brainae.errors import BrainaeError
    from brainae.io import check_distinct, list_niftis

    cohort = None
    inputs = [brain_mask, _model_input(model, "anomaly")]
    if _cohort.wanted(inp, bids_out, shard):  # BIDS / --shard: the model decides which maps there are
        kind, loaded = _job_model(model, "anomaly", device)
        cohort = _cohort.plan(
            inp,
            out,
            job="anomaly",
            bids_out=bids_out,
            shard=shard,
            force=force,
            extras={"calibrated": calibrated, "lesion": lesion_mask},
            bids_extras=("calibrated", "lesion") if kind in ("volumetric", "normative") else (),
        )
        pairs = cohort.pairs
        extra = {
            k: cohort.extra(k) for k in ("calibrated", "lesion") if all(k in i.outputs for i in cohort.items)
        }
    elif out is not None:
        pairs = _pairs(inp, out, force, inputs)
    elif inp.is_dir():
        pairs = [(f, None) for f in list_niftis(inp)]
    elif inp.exists():
        pairs = [(inp, None)]
    else:
        raise BrainaeError(f"{inp}: no such file or folder; check the path")
    _check_view(view, inp, force, inputs)
    if cohort is None:
        extra = {}
        for name, target in (("calibrated", calibrated), ("lesion", lesion_mask)):
            if target is not None:
                extra[name] = [dst for _, dst in _pairs(inp, target, force, inputs)]
        check_distinct([dst for _, dst in pairs] + [d for dsts in extra.values() for d in dsts] + [view])
        kind, loaded = _job_model(model, "anomaly", device)
    if kind == "slice":
        if extra or brain_mask is not None or workers > 1:
            raise BrainaeError(
                "--calibrated, --lesion-mask, --brain-mask and --workers need a brainae anomaly model, "
                "not a slice autoencoder"
            )
        rows, lines = _slice_anomaly(
            inp,
            pairs,
            loaded,
            model,
            signed,
            device,
            batch_size,
            min_brain_frac,
            mask_method,
            as_json,
            view,
            cohort,
            force,
        )
    else:
        rows, lines = _volumetric_anomaly(
            inp,
            pairs,
            extra,
            loaded,
            brain_mask,
            fpr,
            device,
            mask_method,
            as_json,
            view,
            workers,
            cohort,
            model,
            force,
        )
    _print(lines)
    if cohort is not None and not as_json:
        console.print(cohort.summary())
    if as_json:
        typer.echo(json.dumps(rows if inp.is_dir() else rows[0], allow_nan=False))


def _volumetric_anomaly(
    inp,
    pairs,
    extra,
    vm,
    brain_mask,
    fpr,
    device,
    mask_method,
    as_json,
    view=None,
    workers=1,
    cohort=None,
    model=None,
    force=False,
):
    import numpy as np

    from brainae.cli import _cohort
    from brainae.errors import BrainaeError
    from brainae.infer import anomaly_volume, warn_if_threshold_mask
    from brainae.io import load_volume
    from brainae.normative import NormativeModel, normative_anomaly

    def job(src: Path, _dst) -> tuple:
        """(volume, whether a brain mask was given, the maps)."""
        vol = load_volume(src)
        brain = None
        if brain_mask is not None:
            bpath = brain_mask / src.name if brain_mask.is_dir() else brain_mask
            if not bpath.exists():
                raise BrainaeError(f"{bpath}: no such brain mask; give a mask NIfTI on the scan's grid")
            brain = _load_mask(bpath, vol)
            if not brain.any() or brain.all():
                what = "is empty" if not brain.any() else "covers every voxel"
                raise BrainaeError(
                    f"{bpath}: the brain mask {what}; give the brain mask of {src.name} (non-zero inside the "
                    "brain only), or leave --brain-mask out"
                )
        try:
            if isinstance(vm, NormativeModel):
                res = normative_anomaly(vol, vm, brain=brain, mask_method=mask_method or "auto", fpr=fpr)
            else:
                res = anomaly_volume(
                    vol, vm, brain=brain, device=device, mask_method=mask_method or "auto", fpr=fpr
                )
        except BrainaeError as exc:
            if brain is None or bpath.name in str(exc):
                raise
            raise BrainaeError(
                f"{bpath}: with this brain mask {src.name} cannot be scored ({exc}); check that it is the brain "
                "mask of this scan"
            ) from None
        return vol, brain is not None, res

    rows, lines = [], []
    with _Outputs(force) as outputs:
        for i, (src, dst, (vol, given, res)) in enumerate(_each(pairs, "anomaly", workers, device, job)):
            if not given:
                warn_if_threshold_mask(res.stripped_input)
            if dst is not None:
                outputs.save(dst, res.residual, vol)
            if "calibrated" in extra and res.calibrated is not None:
                outputs.save(extra["calibrated"][i], res.calibrated, vol)
            if "lesion" in extra and res.lesion is not None:
                outputs.save(extra["lesion"][i], res.lesion.astype(np.float32), vol)
            score = _finite_or_none(res.score, f"{src.name}: the anomaly score")
            z = None if res.z is None else _finite_or_none(res.z, f"{src.name}: the z-score")
            flagged = None if res.lesion is None else float(res.lesion[res.brain].mean())
            row = {
                "score": score,
                "z": z,
                "flagged_fraction": flagged,
                "fpr": fpr,
                "skull_stripped_input": bool(res.stripped_input),
                "brain_ml": float(res.brain.sum() * np.prod(vol.zooms) / 1000.0),
            }
            rows.append({"file": str(src), **row} if inp.is_dir() else row)
            if cohort is not None:
                settings = {"device": device, "fpr": fpr, "mask_method": mask_method or "auto"}
                cohort.done(outputs, src, _cohort.sidecar(vm, model, settings, Scores=row))
            if not as_json:
                z_text = "n/a" if z is None else f"{z:+.2f}"
                s_text = "n/a" if score is None else f"{score:.4f}"
                f_text = (
                    ""
                    if flagged is None
                    else f", {100 * flagged:.2f} % of the brain above the {fpr:g} FPR threshold"
                )
                where = f" -> {dst}" if dst is not None else ""
                lines.append(f"{src.name}: score {s_text}, z {z_text}{f_text}{where}")
            if view is not None:
                maps = [("anomaly map (residual)", res.residual, res.threshold, True)]
                if res.calibrated is not None:
                    maps.append(("calibrated map (-log10 p)", res.calibrated, -float(np.log10(fpr)), False))
                page = _write_view(view, vol, maps, mode="overlay", title=f"{src.name}: anomaly map")
                if not as_json:
                    lines.append(page)
    return rows, lines


def _slice_anomaly(
    inp,
    pairs,
    loaded,
    model,
    signed,
    device,
    batch_size,
    min_brain_frac,
    mask_method,
    as_json,
    view=None,
    cohort=None,
    force=False,
):
    import warnings

    from brainae.cli import _cohort
    from brainae.errors import BrainaeWarning
    from brainae.io import load_volume
    from brainae.slice_anomaly import anomaly

    model_, prep, normative = loaded
    if normative is None or normative.std is None:
        warnings.warn(
            f"{model}: no normative statistics in the checkpoint; z-scores are not available",
            BrainaeWarning,
            stacklevel=2,
        )
    sel = _selection(min_brain_frac, mask_method, normative)
    rows, lines = [], []
    with _Outputs(force) as outputs:

        def job(src: Path, _dst) -> tuple:
            vol = load_volume(src)
            res = anomaly(
                vol,
                model_,
                prep,
                normative=normative,
                batch_size=batch_size,
                device=device,
                selection=sel,
                signed=signed,
            )
            return vol, res

        for src, dst, (vol, res) in _each(pairs, "anomaly", 1, device, job):
            if dst is not None:
                outputs.save(dst, res.map, vol)
            score = _finite_or_none(res.score, f"{src.name}: the anomaly score")
            z = None if res.z is None else _finite_or_none(res.z, f"{src.name}: the z-score")
            row = {"score": score, "z": z, "slices": res.n_slices}
            rows.append({"file": str(src), **row} if inp.is_dir() else row)
            if cohort is not None:
                settings = {"device": device, "selection": _describe(sel), "signed": signed}
                cohort.done(outputs, src, _cohort.sidecar(None, model or "anomaly", settings, Scores=row))
            if not as_json:
                z_text = "n/a" if z is None else f"{z:+.2f}"
                s_text = "n/a" if score is None else f"{score:.4f}"
                where = f" -> {dst}" if dst is not None else ""
                lines.append(f"{src.name}: score {s_text}, z {z_text} ({res.n_slices} slices){where}")
            if view is not None:
                maps = [("anomaly map", res.map, None, True)]
                page = _write_view(view, vol, maps, mode="overlay", title=f"{src.name}: anomaly map")
                if not as_json:
                    lines.append(page)
    return rows, lines


def _finite_or_none(value: float, what: str) -> float | None:
    """``value``, or None (JSON ``null``) with a warning when it is NaN/Inf."""
    import math
    import warnings

    from brainae.errors import BrainaeWarning

    if value is None or math.isfinite(value):
        return value
    warnings.warn(
        f"{what} is {value} (no scored slice, or NaN model output); reported as null",
        BrainaeWarning,
        stacklevel=2,
    )
    return None
