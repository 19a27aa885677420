"""BIDS in and out: find the T1w scans of a BIDS dataset, name brainae's results as BIDS derivatives.

A BIDS dataset (https://bids-specification.readthedocs.io) keeps scans as
``sub-<label>/[ses-<label>/]anat/sub-<label>[_ses-<label>][_<entity>-<label>...]_T1w.nii[.gz]``. brainae's
results go to a derivatives dataset (default ``<bids>/derivatives/brainae``) with a
``dataset_description.json`` (``DatasetType: derivative``, ``GeneratedBy`` brainae and its version) and, per
result, ``sub-<label>/[ses-<label>/]anat/<the scan's entities>_desc-<what>_<suffix>.nii.gz`` with a JSON sidecar
of the same name that says what made it (the model, its card, the settings) and from which scan (``Sources``).

Pure naming and discovery, plus the two small JSON writers; the commands decide what to write.

Example:
    >>> from brainae.bids import derivative_name, parse_entities
    >>> ents = parse_entities("sub-01_ses-2_run-1_T1w.nii.gz")
    >>> derivative_name(ents, desc="denoised", suffix="T1w")
    'sub-01/ses-2/anat/sub-01_ses-2_run-1_desc-denoised_T1w.nii.gz'
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from brainae.errors import BrainaeError

#: The entities a T1w file name may carry, in the order BIDS requires (anat, raw data).
ENTITY_ORDER = ("sub", "ses", "acq", "ce", "rec", "run", "echo", "part", "chunk")
_LABEL = re.compile(r"^[A-Za-z0-9]+$")
_T1W = re.compile(r"^(?P<ents>sub-[A-Za-z0-9]+(?:_[a-z]+-[A-Za-z0-9]+)*)_T1w\.nii(?:\.gz)?$")
BIDS_VERSION = "1.9.0"


@dataclass(frozen=True)
class Scan:
    """One T1w scan of a BIDS dataset: its file and its entities (``{"sub": "01", "ses": "2", ...}``)."""

    path: Path
    entities: dict[str, str]

    @property
    def subject(self) -> str:
        return self.entities["sub"]


def is_bids(folder: str | os.PathLike) -> bool:
    """True when ``folder`` looks like a BIDS dataset: a ``dataset_description.json`` or ``sub-*`` folders."""
    folder = Path(folder)
    if not folder.is_dir():
        return False
    if (folder / "dataset_description.json").is_file():
        return True
    return any(p.is_dir() and p.name.startswith("sub-") for p in folder.iterdir())


def parse_entities(name: str) -> dict[str, str]:
    """The entities of a BIDS T1w file name (``sub-01_ses-2_T1w.nii.gz`` -> ``{"sub": "01", "ses": "2"}``).

    Raises:
        BrainaeError: the name is not a BIDS T1w name.
    """
    m = _T1W.match(name)
    if not m:
        raise BrainaeError(f"{name}: not a BIDS T1w file name (sub-<label>[_ses-<label>]..._T1w.nii[.gz])")
    ents = dict(part.split("-", 1) for part in m.group("ents").split("_"))
    return ents


def find_t1w(bids: str | os.PathLike) -> list[Scan]:
    """Every ``sub-*/[ses-*/]anat/*_T1w.nii[.gz]`` of a BIDS dataset, sorted by path.

    Files whose entities disagree with their folders (``sub-01/anat/sub-02_T1w.nii.gz``) are refused: their
    results would land in another subject's folder.

    Raises:
        BrainaeError: no such folder, no T1w scan, or a misplaced file.
    """
    bids = Path(bids)
    if not bids.is_dir():
        raise BrainaeError(f"{bids}: no such folder; give the BIDS dataset's root folder")
    found = sorted(bids.glob("sub-*/anat/*_T1w.nii*")) + sorted(bids.glob("sub-*/ses-*/anat/*_T1w.nii*"))
    scans = []
    for path in sorted(found):
        if not path.is_file() or not path.name.endswith((".nii", ".nii.gz")):
            continue
        ents = parse_entities(path.name)
        rel = path.relative_to(bids).parts
        ses = rel[1][4:] if rel[1].startswith("ses-") else None
        if rel[0] != f"sub-{ents['sub']}" or ses != ents.get("ses"):
            raise BrainaeError(
                f"{path}: its name says sub-{ents['sub']}"
                + (f"_ses-{ents['ses']}" if "ses" in ents else "")
                + f" but it is in {'/'.join(rel[:-2])}; move or rename it (BIDS: the folders match the name)"
            )
        scans.append(Scan(path, ents))
    if not scans:
        raise BrainaeError(
            f"{bids}: no T1w scans found (sub-<label>/[ses-<label>/]anat/sub-<label>..._T1w.nii[.gz]); is this "
            "the BIDS dataset's root folder?"
        )
    return scans


def flat_entities(path: str | os.PathLike) -> dict[str, str]:
    """Entities for a file that is not BIDS-named: its BIDS entities when it has them, else ``sub`` made from
    the file name's letters and digits (``IXI002-Guys-0828_T1.nii.gz`` -> ``{"sub": "IXI002Guys0828T1"}``)."""
    name = Path(path).name
    try:
        return parse_entities(name)
    except BrainaeError:
        stem = name[: -len(".nii.gz")] if name.lower().endswith(".nii.gz") else Path(name).stem
        label = re.sub(r"[^A-Za-z0-9]", "", stem)
        if not label:
            raise BrainaeError(
                f"{name}: no letters or digits to name a BIDS subject from; rename it"
            ) from None
        return {"sub": label}


def derivative_name(entities: dict[str, str], *, desc: str, suffix: str, ext: str = ".nii.gz") -> str:
    """The relative path of a derivative of the scan with ``entities`` (``desc``: what it is; ``suffix``:
    ``T1w`` for images, ``mask`` for masks)."""
    if not _LABEL.match(desc):
        raise BrainaeError(f"desc-{desc}: a BIDS label has letters and digits only")
    unknown = set(entities) - set(ENTITY_ORDER)
    ordered = [k for k in ENTITY_ORDER if k in entities] + sorted(unknown)
    stem = "_".join(f"{k}-{entities[k]}" for k in ordered)
    folder = f"sub-{entities['sub']}" + (f"/ses-{entities['ses']}" if "ses" in entities else "")
    return f"{folder}/anat/{stem}_desc-{desc}_{suffix}{ext}"


def sidecar_path(image: Path) -> Path:
    """The JSON sidecar beside a derivative image (``x_T1w.nii.gz`` -> ``x_T1w.json``)."""
    name = image.name
    stem = name[: -len(".nii.gz")] if name.endswith(".nii.gz") else name.rsplit(".", 1)[0]
    return image.with_name(stem + ".json")


def dataset_description(source: str | None = None) -> dict[str, Any]:
    """The ``dataset_description.json`` of brainae's derivatives (no time stamp: every shard writes the same)."""
    from brainae import __version__

    desc: dict[str, Any] = {
        "Name": "brainae outputs",
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "derivative",
        "GeneratedBy": [
            {
                "Name": "brainae",
                "Version": __version__,
                "Description": "Normative autoencoders for T1-weighted brain MRI: denoising, inpainting, "
                "anomaly maps.",
            }
        ],
    }
    if source is not None:
        desc["SourceDatasets"] = [{"URL": source}]
    return desc


def check_derivatives_folder(root: Path) -> None:
    """Refuse a derivatives folder whose ``dataset_description.json`` another tool wrote."""
    path = root / "dataset_description.json"
    if not path.is_file():
        return
    try:
        desc = json.loads(path.read_text(encoding="utf-8"))
        names = [g.get("Name") for g in desc.get("GeneratedBy", [])]
    except (ValueError, AttributeError, TypeError):
        names = []
    if "brainae" not in names:
        raise BrainaeError(
            f"{path}: a derivatives dataset that brainae did not write; give brainae its own folder "
            "(--bids-out DIR, e.g. <bids>/derivatives/brainae)"
        )


def json_bytes(obj: Any) -> bytes:
    """JSON as brainae writes it (sorted keys, 2-space indent, a final newline): the same object, the same bytes."""
    return (json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n").encode()


def participants(bids: str | os.PathLike) -> Path | None:
    """The dataset's ``participants.tsv`` (participant_id, age, sex, ...), or None when it has none."""
    path = Path(bids) / "participants.tsv"
    return path if path.is_file() else None
