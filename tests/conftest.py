"""Shared fixtures: tiny synthetic head volumes written as NIfTI, and the paths of the shared real data."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
IXI_2MM = SHARED / "data" / "ixi-t1-2mm"
SEED_WEIGHTS = SHARED / "data" / "seed-weights"


# Native IXI stores voxel axes as P, S, R: axis 0 runs to posterior, 1 to superior, 2 to the right.
def psr_affine(zooms=(2.0, 2.0, 2.5)) -> np.ndarray:
    zp, zs, zr = zooms
    return np.array([[0, 0, zr, -40.0], [-zp, 0, 0, 40.0], [0, zs, 0, -40.0], [0, 0, 0, 1.0]])


def synthetic_head(shape=(40, 40, 30), empty=5, seed=0) -> np.ndarray:
    """P,S,R volume: a bright ellipsoid 'brain' in a dimmer 'scalp' shell; the first and last ``empty``
    sagittal slices (axis 2) are exactly zero."""
    rng = np.random.default_rng(seed)
    p, s, r = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    rad = np.sqrt(p**2 + s**2 + r**2)
    vol = np.where(rad < 0.75, 100.0, 0.0) + np.where((rad >= 0.75) & (rad < 0.9), 40.0, 0.0)
    vol = vol + np.where(rad < 0.9, rng.normal(0, 3, shape), 0.0) + 20.0 * (p > 0) * (rad < 0.75)
    vol = np.clip(vol, 0, None)
    vol[:, :, :empty] = 0
    vol[:, :, shape[2] - empty :] = 0
    return vol.astype(np.int16)


def write_volume(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    nib.save(nib.Nifti1Image(data, psr_affine() if affine is None else affine), str(path))
    return path


@pytest.fixture
def cohort(tmp_path) -> Path:
    """A folder of 8 tiny IXI-named volumes and a participants.csv beside it."""
    folder = tmp_path / "cohort"
    folder.mkdir()
    rows = ["participant_id,age,sex"]
    for i in range(8):
        name = f"IXI{100 + i:03d}-HH-{1000 + i}-T1.nii.gz"
        write_volume(folder / name, synthetic_head(seed=i))
        rows.append(f"IXI{100 + i:03d}-HH-{1000 + i},{30 + 6 * i},{'MF'[i % 2]}")
    (tmp_path / "participants.csv").write_text("\n".join(rows) + "\n")
    return folder
