"""brainae for notebooks: ``brainae.denoise``, ``brainae.inpaint``, ``brainae.anomaly`` on one scan.

Each takes a scan as a path, a nibabel image, or a ``(array, affine)`` pair, uses brainae's shipped default
model for the job unless ``model=`` names a checkpoint (or a loaded :class:`brainae.infer.VolumetricModel`),
and returns nibabel images on the input's grid (same shape and affine, float32). The input is not modified.

Example:
    >>> import numpy as np, brainae
    >>> rng = np.random.default_rng(0)
    >>> head = np.zeros((40, 48, 40), np.float32); head[8:32, 8:40, 8:32] = 100.0
    >>> noisy = head + rng.normal(0, 5, head.shape).astype(np.float32)
    >>> out = brainae.denoise((noisy, np.diag([2.0, 2.0, 2.0, 1.0])))
    >>> out.shape
    (40, 48, 40)
    >>> bool(np.abs(out.get_fdata() - head).mean() < np.abs(noisy - head).mean())
    True
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from brainae.errors import BrainaeError
from brainae.io import check_same_grid

__all__ = ["AnomalyOutput", "anomaly", "as_volume", "denoise", "inpaint", "to_image"]


def as_volume(img, *, name: str = "image"):
    """A RAS+ :class:`brainae.io.Volume` from a path, a nibabel image or an ``(array, affine)`` pair."""
    import nibabel as nib

    from brainae.io import load_volume, volume_from_image

    if isinstance(img, str | os.PathLike):
        return load_volume(img)
    if isinstance(img, tuple) and len(img) == 2:
        data, affine = img
        img = nib.Nifti1Image(np.asarray(data, dtype=np.float32), np.asarray(affine, dtype=np.float64))
    if not hasattr(img, "affine") or not hasattr(img, "dataobj"):
        raise BrainaeError(f"{name}: give a path, a nibabel image or an (array, affine) pair")
    return volume_from_image(img, Path(getattr(img, "get_filename", lambda: None)() or f"<{name}>"))


def to_image(data_ras: np.ndarray, like):
    """A float32 nibabel image of RAS+ ``data_ras`` on the grid (shape, affine, orientation) of ``like``."""
    from brainae.io import image_like

    return image_like(data_ras, like)


def _model(model, task: str, device):
    from brainae.infer import VolumetricModel, load_volumetric

    if isinstance(model, VolumetricModel):
        return model
    return load_volumetric(model, task=task, device=device)


def denoise(img, *, model=None, device: str = "cpu", strength: str = "auto"):
    """Denoised scan (nibabel image on the input's grid) with brainae's default denoiser or ``model``.

    The network's output, 3-D non-local means and other classical estimates of the scan are mixed in the
    shares the checkpoint's tables give for the noise level read from the scan
    (:func:`brainae.infer.denoise_volume`).

    ``strength``: ``auto`` (default), ``tables`` or ``sure``; see :data:`brainae.infer.STRENGTHS`.
    """
    from brainae.infer import denoise_volume

    vol = as_volume(img)
    vm = _model(model, "denoise", device)
    return to_image(denoise_volume(vol, vm, device=device, strength=strength), vol)


@functools.cache
def _default_atlas():
    """The shipped atlas, read once per process."""
    from brainae.atlas import load_atlas
    from brainae.infer import DEFAULT_ATLAS

    return load_atlas(DEFAULT_ATLAS)


def inpaint(img, mask, *, model=None, device: str = "cpu"):
    """Scan with the voxels of ``mask`` (non-zero = fill; same kinds as ``img``, same grid) filled.

    ``model``: None or ``"atlas"`` (the shipped atlas, the default), or an atlas (an ``.npz`` file or
    :class:`brainae.atlas.Atlas`): the biharmonic fill plus the detail of matching regions of healthy brains
    (:func:`brainae.atlas.inpaint_with_atlas`); ``"inpaint"`` or a 3-D inpainting checkpoint
    (``.safetensors``): the network's correction of the biharmonic fill.
    Every voxel outside the mask is returned unchanged.

    Example:
        >>> import numpy as np, brainae                                             # doctest: +SKIP
        >>> hole = np.zeros(img.shape, np.uint8); hole[40:50, 50:60, 40:50] = 1       # doctest: +SKIP
        >>> out = brainae.inpaint(img, (hole, img.affine))                            # doctest: +SKIP
    """
    from brainae.atlas import Atlas, inpaint_with_atlas, load_atlas
    from brainae.infer import inpaint_volume

    vol = as_volume(img)
    m = as_volume(mask, name="mask")
    check_same_grid(m, vol, "mask")
    if model is None or (isinstance(model, str) and model == "atlas"):
        atlas = _default_atlas()
    elif isinstance(model, Atlas):
        atlas = model
    elif isinstance(model, str | os.PathLike) and Path(model).suffix.lower() == ".npz":
        atlas = load_atlas(model)
    else:
        atlas = None
    if atlas is not None:
        return to_image(inpaint_with_atlas(vol, m.data != 0, atlas), vol)
    vm = _model(model, "inpaint", device)
    return to_image(inpaint_volume(vol, m.data != 0, vm, device=device), vol)


def _anomaly_model(model, device):
    """The normative model (default, ``"normative"``, a normative ``.npz`` or a loaded one) or a volumetric
    anomaly checkpoint (``"anomaly"``, a path, a loaded one)."""
    from brainae.infer import VolumetricModel
    from brainae.normative import NormativeModel, is_normative_file, load_normative
    from brainae.pretrained import resolve_model_name

    if isinstance(model, NormativeModel | VolumetricModel):
        return model
    path = resolve_model_name("normative" if model is None else model)
    if is_normative_file(path):
        return load_normative(path)
    return _model(path, "anomaly", device)


@dataclass
class AnomalyOutput:
    """What :func:`anomaly` returns: nibabel images on the input's grid and the scores.

    Attributes:
        residual: the anomaly map inside the brain (0 outside): the normative model's score, or
            ``|x - f(x)|`` of an autoencoder.
        calibrated: ``-log10`` healthy tail probability of each voxel's residual (2 = 1 % of healthy voxels).
        mask: binary lesion mask at the healthy-data threshold (``fpr``).
        brain: the brain mask used.
        score: volume score; z: its z-score against healthy validation volumes.
        stripped_input: whether the input was already skull-stripped.
    """

    residual: object
    calibrated: object | None
    mask: object | None
    brain: object
    score: float
    z: float | None
    stripped_input: bool

    def to_dict(self) -> dict:
        """Scores as a JSON-able dict (non-finite values as None)."""
        import math

        def clean(v):
            return v if v is None or math.isfinite(v) else None

        return {"score": clean(self.score), "z": clean(self.z), "stripped_input": self.stripped_input}


def anomaly(
    img, *, model=None, device: str = "cpu", brain_mask=None, fpr: float = 0.01, mask_method: str = "auto"
):
    """Anomaly maps of a scan as an :class:`AnomalyOutput`.

    The default ``model`` is the normative model of healthy anatomy (:func:`brainae.normative.normative_anomaly`:
    registration to a healthy template, per-voxel comparison with the healthy cohort); ``model="anomaly"``
    (or an anomaly checkpoint) gives the coarse-noise autoencoder's residual map
    (:func:`brainae.infer.anomaly_volume`).

    ``brain_mask`` (same kinds as ``img``) skips brain extraction; otherwise a skull-stripped input is used as
    it is and one with its skull is stripped (``mask_method``: deepbet when installed).
    """
    from brainae.infer import anomaly_volume
    from brainae.normative import NormativeModel, normative_anomaly

    vol = as_volume(img)
    brain = None
    if brain_mask is not None:
        b = as_volume(brain_mask, name="brain_mask")
        check_same_grid(b, vol, "brain mask")
        brain = b.data != 0
    vm = _anomaly_model(model, device)
    if isinstance(vm, NormativeModel):
        res = normative_anomaly(vol, vm, brain=brain, mask_method=mask_method, fpr=fpr)
    else:
        res = anomaly_volume(vol, vm, brain=brain, device=device, mask_method=mask_method, fpr=fpr)
    return AnomalyOutput(
        residual=to_image(res.residual, vol),
        calibrated=None if res.calibrated is None else to_image(res.calibrated, vol),
        mask=None if res.lesion is None else to_image(res.lesion.astype(np.float32), vol),
        brain=to_image(res.brain.astype(np.float32), vol),
        score=res.score,
        z=res.z,
        stripped_input=res.stripped_input,
    )
