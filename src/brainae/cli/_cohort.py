"""Cohort mode of the apply commands: BIDS datasets in and BIDS derivatives out, ``--shard K/N``, and reruns that
continue where a killed run stopped.

Without a BIDS input, ``--bids-out`` or ``--shard``, the commands keep their folder behaviour (all outputs of a
folder or none). In cohort mode each scan's outputs are renamed into place as soon as that scan is done (its
JSON sidecar last), so a killed job leaves only complete scans; a scan whose outputs all exist is skipped on
the next run (``--force`` redoes it), and one summary line per shard says what was done.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: What each job writes, by output: (desc, suffix) of its BIDS name.
BIDS_OUTPUTS: dict[str, dict[str, tuple[str, str]]] = {
    "denoise": {"main": ("denoised", "T1w")},
    "inpaint": {"main": ("inpainted", "T1w")},
    "anomaly": {
        "main": ("anomaly", "T1w"),
        "calibrated": ("anomalycalibrated", "T1w"),
        "lesion": ("anomaly", "mask"),
    },
}
DESCRIPTIONS = {
    "main": {
        "denoise": "the scan denoised by brainae",
        "inpaint": "the scan with the masked voxels filled by brainae",
        "anomaly": "anomaly map: |x - f(x)| inside the brain (zero outside)",
    },
    "calibrated": "calibrated anomaly map: -log10 of the share of healthy brain voxels with a residual at least "
    "as high (2 = 1 %)",
    "lesion": "voxels above the anomaly map's threshold for the given false-positive rate on healthy brains",
}


@dataclass
class Item:
    """One scan: its file, its outputs by name (``main``, ``calibrated``, ``lesion``) and its JSON sidecar."""

    src: Path
    outputs: dict[str, Path]
    sidecar: Path | None = None
    source_uri: str | None = None


@dataclass
class Cohort:
    """The scans of this run (this shard, less those already complete) and where their results go."""

    job: str
    inp: Path
    root: Path
    bids: bool
    shard: tuple[int, int] | None
    items: list[Item]
    skipped: list[Item]
    written: int = 0
    _by_src: dict[Path, Item] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._by_src = {i.src: i for i in self.items}

    @property
    def pairs(self) -> list[tuple[Path, Path]]:
        return [(i.src, i.outputs["main"]) for i in self.items]

    def extra(self, name: str) -> list[Path]:
        """The output ``name`` of each scan to do, in the order of :attr:`pairs`."""
        return [i.outputs[name] for i in self.items]

    def done(self, outputs: Any, src: Path, sidecar: dict[str, Any]) -> None:
        """Stage the scan's sidecar (BIDS) and rename all of the scan's outputs into place, sidecar last."""
        item = self._by_src[src]
        if item.sidecar is not None:
            meta = {"Description": DESCRIPTIONS["main"][self.job]}
            if item.source_uri is not None:
                meta["Sources"] = [item.source_uri]
            for name, path in item.outputs.items():
                if name != "main":
                    extra = {**meta, "Description": DESCRIPTIONS[name], "Model": sidecar.get("Model")}
                    outputs.save_bytes(
                        _sidecar_of(path), _json({**extra, "Settings": sidecar.get("Settings")})
                    )
            outputs.save_bytes(item.sidecar, _json({**meta, **sidecar}))  # staged last: renamed last
        outputs.commit()
        self.written += 1

    def summary(self) -> str:
        where = f"shard {self.shard[0]}/{self.shard[1]}" if self.shard else "all scans"
        n = len(self.items) + len(self.skipped)
        return (
            f"{where} of {self.inp}: {n} scans, {self.written} written, {len(self.skipped)} skipped (already "
            f"complete) -> {self.root}"
        )


def _json(obj: Any) -> bytes:
    import json

    return (json.dumps(obj, indent=2, sort_keys=True, allow_nan=False, default=str) + "\n").encode()


def _sidecar_of(image: Path) -> Path:
    from brainae.bids import sidecar_path

    return sidecar_path(image)


def plan(
    inp: Path,
    out: Path | None,
    *,
    job: str,
    bids_out: Path | None,
    shard: str | None,
    force: bool,
    extras: dict[str, Path | None] | None = None,
    bids_extras: tuple[str, ...] = (),
) -> Cohort | None:
    """The cohort run for these arguments, or None when the command keeps its plain file/folder behaviour.

    ``extras``: the folders of a folder run's other outputs (``--calibrated``, ``--lesion-mask``);
    ``bids_extras``: the other outputs a BIDS run writes (those of :data:`BIDS_OUTPUTS` the model makes).
    """
    from brainae import bids as B
    from brainae.errors import BrainaeError
    from brainae.io import list_niftis, remove_stale_temporaries
    from brainae.shards import parse_shard, take_shard

    is_bids = B.is_bids(inp)
    if not is_bids and bids_out is None and shard is None:
        return None
    if not inp.is_dir():
        raise BrainaeError(
            f"{inp}: --shard and --bids-out take a folder of scans or a BIDS dataset, not one file"
        )
    parts = parse_shard(shard) if shard is not None else None
    if is_bids or bids_out is not None:
        root = bids_out or out or inp / "derivatives" / "brainae"
        if bids_out is not None and out is not None and out != bids_out:
            raise BrainaeError(f"{out}: give either OUT or --bids-out for BIDS derivatives, not both")
        if root.exists() and not root.is_dir():
            raise BrainaeError(f"{root}: is a file; BIDS derivatives go to a folder")
        B.check_derivatives_folder(root)
        scans = B.find_t1w(inp) if is_bids else [B.Scan(f, B.flat_entities(f)) for f in list_niftis(inp)]
        _check_unique(scans)
        names = {"main": BIDS_OUTPUTS[job]["main"]} | {k: BIDS_OUTPUTS[job][k] for k in bids_extras}
        items = []
        for scan in take_shard(scans, parts):
            outputs = {
                k: root / B.derivative_name(scan.entities, desc=d, suffix=s) for k, (d, s) in names.items()
            }
            uri = (
                f"bids:raw:{scan.path.relative_to(inp).as_posix()}"
                if is_bids
                else scan.path.resolve().as_uri()
            )
            items.append(Item(scan.path, outputs, B.sidecar_path(outputs["main"]), uri))
        desc = B.dataset_description(inp.resolve().as_uri())
        if is_bids:
            desc["DatasetLinks"] = {"raw": inp.resolve().as_uri()}
        _write_description(root, desc)
    else:
        if out is None:
            raise BrainaeError(f"{inp}: give an output folder for the results of a folder of scans")
        if out.exists() and not out.is_dir():
            raise BrainaeError(f"{out}: is a file; with a folder of inputs, OUT must be a folder")
        for folder in [out, *(d for d in (extras or {}).values() if d is not None)]:
            if folder.exists() and folder.resolve() == inp.resolve():
                raise BrainaeError(
                    f"{folder}: is the input folder; inputs are never overwritten, choose another"
                )
        items = []
        for f in take_shard(list_niftis(inp), parts):
            outputs = {"main": out / f.name} | {
                k: d / f.name for k, d in (extras or {}).items() if d is not None
            }
            items.append(Item(f, outputs))
        root = out
    todo, skipped = [], []
    for item in items:
        for path in [*item.outputs.values(), *([item.sidecar] if item.sidecar else [])]:
            remove_stale_temporaries(path)
        if _complete(item) and not force:
            skipped.append(item)
            continue
        _check_replaceable(item, inputs=[i.src for i in items])
        todo.append(item)
    return Cohort(job, inp, root, is_bids or bids_out is not None, parts, todo, skipped)


def _check_unique(scans: list) -> None:
    from brainae.bids import derivative_name
    from brainae.errors import BrainaeError

    seen: dict[str, Path] = {}
    for scan in scans:
        name = derivative_name(scan.entities, desc="x", suffix="T1w")
        if name in seen:
            raise BrainaeError(
                f"{scan.path}: its results would have the same BIDS name as those of {seen[name]}; rename one"
            )
        seen[name] = scan.path


def _complete(item: Item) -> bool:
    """Every output of the scan is there (each was renamed into place whole; the sidecar, when there is one,
    last of all)."""
    from brainae.io import written_by_brainae

    files = [*item.outputs.values(), *([item.sidecar] if item.sidecar else [])]
    return all(p.is_file() for p in files) and all(written_by_brainae(p) for p in item.outputs.values())


def _check_replaceable(item: Item, inputs: list[Path]) -> None:
    """An output that is there (an interrupted scan's) is replaced only when brainae wrote it."""
    from brainae.errors import BrainaeError
    from brainae.io import written_by_brainae

    for path in item.outputs.values():
        if any(path.resolve() == src.resolve() for src in inputs if path.exists()):
            raise BrainaeError(
                f"{path}: is an input file; inputs are never overwritten, choose another output"
            )
        if path.exists() and not written_by_brainae(path):
            raise BrainaeError(
                f"{path}: exists and was not written by brainae (no brainae mark in its header); move it away "
                "or choose another output folder"
            )


def _write_description(root: Path, desc: dict[str, Any]) -> None:
    """Write ``dataset_description.json`` (atomically; every shard writes the same bytes)."""
    from brainae.errors import BrainaeError
    from brainae.io import atomic_path

    path = root / "dataset_description.json"
    data = _json(desc)
    if path.is_file() and path.read_bytes() == data:
        return
    try:
        with atomic_path(path) as tmp:
            tmp.write_bytes(data)
    except BrainaeError:
        if path.is_file() and path.read_bytes() == data:  # another shard wrote the same file meanwhile
            return
        raise


def card_summary(loaded: Any, name: str | None) -> dict[str, Any]:
    """What a sidecar says about the model: its name and the parts of its card (task, source, recipe)."""
    from brainae.normative import NormativeModel

    if isinstance(loaded, NormativeModel):
        prov = loaded.provenance
        return {
            "Name": name or "normative",
            "Task": "anomaly",
            "Kind": "normative model of healthy anatomy (registered template and per-voxel statistics)",
            "Source": {
                "train": len(prov.get("train", [])),
                "val": len(prov.get("val", [])),
                "data": prov.get("source"),
            },
        }
    summary: dict[str, Any] = {"Name": getattr(loaded, "name", None) or name or "?"}
    task = getattr(loaded, "task", None)
    if task is not None:
        summary["Task"] = getattr(task, "name", str(task))
    source = getattr(loaded, "source", None)
    if source is not None and hasattr(source, "to_dict"):
        summary["Source"] = source.to_dict()
    training = getattr(loaded, "training", None)
    if training is not None and getattr(training, "recipe", None):
        summary["Recipe"] = training.recipe
    return summary


def wanted(inp: Path, bids_out: Path | None, shard: str | None) -> bool:
    """True when the command runs in cohort mode (a BIDS dataset IN, ``--bids-out`` or ``--shard``)."""
    from brainae.bids import is_bids

    return bids_out is not None or shard is not None or is_bids(inp)


def sidecar(loaded: Any, model: str | None, settings: dict[str, Any], **more: Any) -> dict[str, Any]:
    """A result's sidecar fields: the model (name and card) and the settings (no time, no shard: every run
    and every shard writes the same bytes for the same scan)."""
    return {"Model": card_summary(loaded, model), "Settings": settings, **more}
