"""Reading and writing NIfTI volumes, and atomic outputs. The only module that imports nibabel.

Every volume is read into the closest canonical orientation (RAS+: the voxel axes point to the subject's
Right, Anterior, Superior), so that the rest of the package slices all volumes in the same anatomical view
whatever their on-disk orientation. :func:`save_like` undoes that reorientation and writes the result with
the input's own affine and header, so outputs lie on the input's grid.

Example:
    >>> vol = load_volume("IXI002-Guys-0828-T1.nii.gz")  # doctest: +SKIP
    >>> vol.data.shape, vol.zooms, vol.axcodes  # data is RAS+, axcodes are the file's own  # doctest: +SKIP
    ((150, 256, 256), (1.2, 0.9375, 0.9375), ('P', 'S', 'R'))
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from brainae.errors import BrainaeError

NIFTI_SUFFIXES = (".nii.gz", ".nii")


def is_nifti(path: str | os.PathLike) -> bool:
    """True for names ending in ``.nii`` or ``.nii.gz`` (case-insensitive)."""
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def volume_id(path: str | os.PathLike) -> str:
    """The file name without ``.nii``/``.nii.gz`` (e.g. ``IXI002-Guys-0828-T1``)."""
    name = Path(path).name
    for suffix in NIFTI_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


_IXI = re.compile(r"^(IXI(\d+))-([A-Za-z]+)-(\d+)", re.IGNORECASE)
_BIDS = re.compile(r"^(sub-[A-Za-z0-9]+)")


def subject_id(path_or_id: str | os.PathLike) -> str:
    """The subject a volume belongs to: ``IXI<id>-<site>-<nnnn>`` for IXI names, ``sub-X`` for BIDS names.

    Other names are their own subject. Two files with the same subject are duplicates of one person.
    """
    vid = volume_id(path_or_id)
    m = _IXI.match(vid)
    if m:
        return f"IXI{int(m.group(2)):03d}-{m.group(3)}-{m.group(4)}"
    m = _BIDS.match(vid)
    return m.group(1) if m else vid


def ixi_number(path_or_id: str | os.PathLike) -> int | None:
    """The IXI subject number (``IXI_ID`` of IXI.xls) of an IXI file name, else None."""
    m = _IXI.match(volume_id(path_or_id))
    return int(m.group(2)) if m else None


def list_niftis(folder: str | os.PathLike) -> list[Path]:
    """The NIfTI files directly in ``folder`` (sorted), with a clear error for a missing/empty folder."""
    folder = Path(folder)
    if not folder.exists():
        raise BrainaeError(f"{folder}: no such folder; give the folder that holds your .nii/.nii.gz volumes")
    if not folder.is_dir():
        raise BrainaeError(f"{folder}: is a file, not a folder; give the folder that holds the volumes")
    files = sorted(p for p in folder.iterdir() if p.is_file() and is_nifti(p))
    if not files:
        raise BrainaeError(
            f"{folder}: no .nii or .nii.gz files found; put the T1 volumes directly in this folder"
        )
    return files


@dataclass(frozen=True)
class HeaderFacts:
    """What the header says about a volume, in its on-disk voxel order."""

    shape: tuple[int, ...]
    zooms: tuple[float, ...]
    axcodes: tuple[str, str, str]
    dtype: str
    ras_zooms: tuple[float, float, float] = (0.0, 0.0, 0.0)


@dataclass
class Volume:
    """A 3-D volume in RAS+ voxel order, with what is needed to write results back on the input's grid.

    Attributes:
        path: the file it came from.
        data: float32 array in RAS+ voxel order (scaled by the header's slope/intercept).
        zooms: voxel sizes in mm along the RAS+ axes.
        header: the facts of the file as stored (shape, zooms and axis codes in on-disk order).
        affine: the RAS+ array's voxel-to-world affine.
    """

    path: Path
    data: np.ndarray
    zooms: tuple[float, float, float]
    header: HeaderFacts
    affine: np.ndarray
    _image: object = field(repr=False, default=None)

    @property
    def id(self) -> str:
        return volume_id(self.path)


VOLUME_PROBLEMS = ("unreadable", "not-3d", "nan")
"""The kinds of :class:`VolumeError`: a file that cannot be read, is not one 3-D volume, or holds NaN/Inf."""


class VolumeError(BrainaeError):
    """A volume that cannot be used; ``kind`` (one of :data:`VOLUME_PROBLEMS`) says why, the message how to fix it.

    Example:
        >>> VolumeError("not-3d", "a.nii: 4-D image").kind
        'not-3d'
    """

    def __init__(self, kind: str, message: str) -> None:
        if kind not in VOLUME_PROBLEMS:
            raise ValueError(f"unknown volume problem {kind!r}")
        super().__init__(message)
        self.kind = kind

    def __reduce__(self):  # noqa: ANN204 - pickle protocol: (kind, message), as __init__ takes them
        return (self.__class__, (self.kind, str(self)))


def _check_readable(path: Path) -> None:
    if not path.exists():
        raise VolumeError("unreadable", f"{path}: no such file; check the path")
    if path.is_dir():
        raise VolumeError("unreadable", f"{path}: is a folder, not a NIfTI file")
    if not is_nifti(path):
        raise VolumeError(
            "unreadable",
            f"{path}: not a NIfTI file (.nii or .nii.gz expected); convert it first (e.g. dcm2niix)",
        )


@contextlib.contextmanager
def _quiet_nibabel() -> Iterator[None]:
    """Silence nibabel's log lines about header repairs ("data code 1234 not recognized") while a file is
    opened: what is wrong reaches the user as brainae's one error line."""
    import logging

    logger = logging.getLogger("nibabel.global")
    disabled = logger.disabled
    logger.disabled = True
    try:
        yield
    finally:
        logger.disabled = disabled


def _load_image(path: Path):
    import nibabel as nib

    _check_readable(path)
    try:
        with _quiet_nibabel():
            img = nib.load(str(path))
        shape = img.shape
    except Exception as exc:  # nibabel raises many types for broken files
        first = (str(exc).splitlines() or [""])[0][:120]
        raise VolumeError(
            "unreadable",
            f"{path}: cannot be read as NIfTI ({type(exc).__name__}: {first}); "
            "re-export or re-download the file",
        ) from None
    check_header(img, shape, path)
    return img, shape


MAX_VOXELS = 2**31
"""More voxels than this in one volume is a damaged header, not a brain scan (1024^3 is 2^30)."""


def check_header(img, shape: tuple[int, ...], path: Path) -> None:
    """Refuse a header that no command can use: a voxel-to-world affine that is not finite or is degenerate
    (a zero voxel size, collapsed axes), an empty or implausibly large grid, or a voxel type that is not a
    number. Every reader of volumes goes through here (via :func:`_load_image`).

    Raises:
        VolumeError: kind ``"unreadable"``.
    """
    fix = "fix the header (e.g. fslorient, or re-export the file from the scanner's DICOM with dcm2niix)"
    try:
        affine = np.asarray(img.affine, dtype=np.float64)
    except Exception:  # nibabel fails in many ways on a damaged qform/sform
        raise VolumeError(
            "unreadable", f"{path}: the header's voxel-to-world affine cannot be read; {fix}"
        ) from None
    if affine.shape != (4, 4) or not np.isfinite(affine).all():
        raise VolumeError(
            "unreadable", f"{path}: the header's voxel-to-world affine is not finite (NaN/Inf); {fix}"
        )
    lin = affine[:3, :3]
    sizes = np.sqrt((lin**2).sum(axis=0))
    if not (sizes > 1e-6).all() or abs(float(np.linalg.det(lin))) < 1e-9 * float(np.prod(sizes)):
        raise VolumeError(
            "unreadable",
            f"{path}: the header's voxel-to-world affine is degenerate (a zero voxel size or collapsed axes); {fix}",
        )
    dims = [int(d) for d in shape]
    if any(d < 1 for d in dims) or float(np.prod([float(d) for d in dims])) > MAX_VOXELS:
        raise VolumeError(
            "unreadable",
            f"{path}: the header gives an impossible grid {tuple(dims)}; re-export or re-download the file",
        )
    try:
        dtype = np.dtype(img.get_data_dtype())
    except Exception:
        dtype = np.dtype("V1")
    if dtype.kind not in "biuf":
        raise VolumeError(
            "unreadable",
            f"{path}: voxels of type {dtype} are not intensities; convert the file to int16 or float32 "
            "(e.g. fslmaths in out -odt float)",
        )
    _check_size(img, dims, dtype, path)


def _check_size(img, dims: list[int], dtype: np.dtype, path: Path) -> None:
    """Refuse a file that cannot hold the voxels its header promises, before memory is set aside for them
    (gzip shrinks a volume at most about 1000-fold)."""
    try:
        size = path.stat().st_size
        offset = float(img.header["vox_offset"])
    except (OSError, KeyError, TypeError, ValueError):
        return
    need = float(np.prod([float(d) for d in dims])) * dtype.itemsize
    packed = str(path).lower().endswith(".gz")
    if (packed and need > 1100.0 * size + 1e6) or (not packed and need + offset > size):
        raise VolumeError(
            "unreadable",
            f"{path}: truncated: the header promises {need / 1e6:.1f} MB of voxels and the file holds "
            f"{size / 1e6:.1f} MB; re-download or re-export the file",
        )


def read_header(path: str | os.PathLike) -> HeaderFacts:
    """Header facts without reading the voxels (fast)."""

    path = Path(path)
    img, shape = _load_image(path)
    return _header_facts(img, shape)


def _header_facts(img, shape: tuple[int, ...]) -> HeaderFacts:
    import nibabel as nib

    zooms = tuple(float(z) for z in img.header.get_zooms())
    codes: tuple[str, str, str] = ("?", "?", "?")
    ras = (0.0, 0.0, 0.0)
    if len(shape) >= 3:
        codes = tuple(str(c) for c in nib.aff2axcodes(img.affine))  # type: ignore[assignment]
        ornt = nib.orientations.io_orientation(img.affine)
        vox = np.sqrt((np.asarray(img.affine)[:3, :3] ** 2).sum(axis=0))
        r = [0.0, 0.0, 0.0]
        for axis, (target, _) in enumerate(ornt):
            r[int(target)] = float(vox[axis])
        ras = (r[0], r[1], r[2])
    return HeaderFacts(
        shape=tuple(int(s) for s in shape),
        zooms=zooms,
        axcodes=codes,
        dtype=str(img.get_data_dtype()),
        ras_zooms=ras,
    )


def check_3d(shape: tuple[int, ...], path: Path) -> None:
    """Refuse a shape that is not one 3-D volume (trailing singleton axes are fine).

    Raises:
        VolumeError: kind ``"not-3d"``.
    """
    if len(shape) < 3 or (len(shape) > 3 and any(s != 1 for s in shape[3:])):
        what = f"{len(shape)}-D image of shape {tuple(shape)}"
        fix = (
            "give one 3-D volume (split 4-D series first, e.g. fslsplit)"
            if len(shape) > 3
            else "give a 3-D volume, not a single slice"
        )
        raise VolumeError("not-3d", f"{path}: {what}; {fix}")


def load_volume(path: str | os.PathLike) -> Volume:
    """Read a 3-D NIfTI into RAS+ order as float32.

    Raises:
        VolumeError: missing, unreadable or truncated file (``unreadable``); not 3-D (``not-3d``); NaN/Inf
            voxels (``nan``).
    """
    path = Path(path)
    img, _ = _load_image(path)
    return volume_from_image(img, path)


def volume_from_image(img, path: str | os.PathLike) -> Volume:
    """A :class:`Volume` from a loaded nibabel image (``path`` names it in messages).

    Raises:
        BrainaeError: not 3-D, truncated voxel data, NaN/Inf voxels.
    """
    import nibabel as nib

    path = Path(path)
    shape = tuple(img.shape)
    check_3d(shape, path)
    facts = _header_facts(img, shape)
    try:
        data = np.asarray(img.dataobj, dtype=np.float32)
    except Exception as exc:  # EOFError, zlib.error, OSError, ValueError... for truncated files
        raise VolumeError(
            "unreadable",
            f"{path}: truncated or corrupt voxel data ({type(exc).__name__}); re-download or re-export the file",
        ) from None
    data = data.reshape(data.shape[:3])
    if not np.isfinite(data).all():
        bad = int((~np.isfinite(data)).sum())
        raise VolumeError(
            "nan",
            f"{path}: {bad} NaN/Inf voxels; replace them (e.g. fslmaths in -nan out) before using this volume",
        )
    ornt = nib.orientations.io_orientation(img.affine)
    ras = nib.orientations.apply_orientation(data, ornt)
    affine = img.affine @ nib.orientations.inv_ornt_aff(ornt, data.shape)
    zooms3 = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    return Volume(
        path=path,
        data=np.ascontiguousarray(ras, dtype=np.float32),
        zooms=(float(zooms3[0]), float(zooms3[1]), float(zooms3[2])),
        header=facts,
        affine=affine,
        _image=img,
    )


def save_like(
    path: str | os.PathLike, data_ras: np.ndarray, like: Volume, *, dtype: str | None = None
) -> Path:
    """Write ``data_ras`` (RAS+ order, ``like.data.shape``) on the grid of ``like``: same shape, affine, header.

    The data are put back into the input file's voxel order. ``dtype`` defaults to float32 (results are
    continuous); pass ``"same"`` to keep the input's on-disk dtype (values are rounded and clipped).
    The file is written atomically.
    """
    import nibabel as nib

    out = image_like(data_ras, like, dtype=dtype)
    mark_as_brainae(out)
    path = Path(path)
    with atomic_path(path) as tmp:
        nib.save(out, str(tmp))
    return path


def stage_like(
    path: str | os.PathLike, data_ras: np.ndarray, like: Volume, *, dtype: str | None = None
) -> Path:
    """Write what :func:`save_like` would write to ``path`` into a brainae temporary beside it, and return the
    temporary: the caller renames it into place with :func:`publish` once every output of its command is
    ready (or removes it). Temporaries of ``path`` left by a killed run are swept first; an operating-system
    error names ``path``, not the temporary.
    """
    import nibabel as nib

    out = image_like(data_ras, like, dtype=dtype)
    mark_as_brainae(out)
    path = Path(path)
    tmp = None
    try:
        remove_stale_temporaries(path)
        tmp = temp_file(path)
        nib.save(out, str(tmp))
    except BaseException as exc:
        if tmp is not None:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
        err = write_error(path, exc)
        if err is not None:
            raise err from None
        raise
    return tmp


BRAINAE_MARK = b"brainae"
"""Start of the NIfTI header's ``descrip`` field in every volume a brainae command writes (see
:func:`written_by_brainae`: ``--force`` replaces only such files)."""


def mark_as_brainae(img) -> None:
    """Set the header's ``descrip`` to ``brainae <version>`` (headers without that field are left alone)."""
    from brainae import __version__

    try:
        img.header["descrip"] = BRAINAE_MARK + f" {__version__}".encode()
    except (KeyError, ValueError, TypeError):
        pass


def written_by_brainae(path: str | os.PathLike) -> bool:
    """True when ``path`` is a NIfTI whose header carries brainae's mark (a file a brainae command wrote)."""
    import nibabel as nib

    try:
        descrip = bytes(np.asarray(nib.load(str(path)).header["descrip"]).tobytes())
    except Exception:  # unreadable, not NIfTI, no descrip field: not ours
        return False
    return descrip.startswith(BRAINAE_MARK)


def image_like(data_ras: np.ndarray, like: Volume, *, dtype: str | None = None):
    """A nibabel image of ``data_ras`` (RAS+ order) on the grid of ``like`` (see :func:`save_like`)."""
    import nibabel as nib

    img = like._image
    if img is None:
        raise BrainaeError(f"{like.path}: the reference volume has no header loaded")
    if tuple(data_ras.shape) != tuple(like.data.shape):
        raise BrainaeError(f"internal: result shape {data_ras.shape} differs from input {like.data.shape}")
    ornt = nib.orientations.io_orientation(img.affine)
    to_file = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt(("R", "A", "S")), ornt)
    back = nib.orientations.apply_orientation(data_ras, to_file)
    back = back.reshape(img.shape)
    header = img.header.copy()
    if dtype == "same":
        out_dtype = np.dtype(img.get_data_dtype())
        if np.issubdtype(out_dtype, np.integer):
            info = np.iinfo(out_dtype)
            back = np.clip(np.rint(back), info.min, info.max)
        arr = back.astype(out_dtype)
    else:
        out_dtype = np.dtype(dtype or np.float32)
        arr = back.astype(out_dtype)
        header.set_data_dtype(out_dtype)
        header.set_slope_inter(1.0, 0.0)
    klass = type(img)
    out = klass(arr, img.affine, header)
    if dtype != "same":
        out.header.set_slope_inter(1.0, 0.0)
    return out


def save_nifti(path: str | os.PathLike, data: np.ndarray, affine: np.ndarray) -> Path:
    """Write a new NIfTI (used for masks and synthetic test volumes), atomically."""
    import nibabel as nib

    path = Path(path)
    with atomic_path(path) as tmp:
        nib.save(nib.Nifti1Image(data, affine), str(tmp))
    return path


def nifti_gz_bytes(
    data: np.ndarray, affine: np.ndarray, *, slope: float = 1.0, inter: float = 0.0, level: int = 6
) -> bytes:
    """A gzipped NIfTI-1 file of ``data`` (stored as its own dtype) as bytes, e.g. to embed in a web page.

    ``slope`` and ``inter`` go into the header's ``scl_slope``/``scl_inter``: readers see
    ``data * slope + inter`` (so an 8-bit copy can keep the original intensity units).
    """
    import gzip

    import nibabel as nib

    img = nib.Nifti1Image(np.asarray(data), np.asarray(affine, dtype=np.float64))
    img.header.set_slope_inter(float(slope), float(inter))
    img.header.set_xyzt_units("mm")
    mark_as_brainae(img)
    return gzip.compress(img.to_bytes(), compresslevel=level, mtime=0)


# ------------------------------------------------------------------------------------ atomic outputs
#
# Every temporary brainae writes beside an output ``NAME`` is ``.NAME.brainae-tmp-PID-XXXXXXXX[SUFFIX]`` (a file
# or a folder) or ``.NAME.brainae-old-PID-XXXXXXXX`` (an output moved aside while its replacement goes in):
# PID is the writer's process id, so that the next writer of the same output can tell a temporary left by a
# killed run (its process is gone) from one being written now; XXXXXXXX is random, so that two writers never
# share a name. Only entries whose whole name matches that pattern are ever swept.

_TMP_TAG = ".brainae-tmp-"
_OLD_TAG = ".brainae-old-"
_RAND = r"[a-z0-9_]{8}"
_TEMP_NAME = re.compile(
    r"^\.(?P<name>.+)\.brainae-(?:tmp|old)-(?P<pid>\d+)-" + _RAND + r"(?P<suffix>(?:\.[A-Za-z0-9]+)*)$"
)


def _tmp_prefix(path: Path, tag: str = _TMP_TAG) -> str:
    return f".{path.name}{tag}{os.getpid()}-"


def temp_owner(name: str) -> str | None:
    """The output name that the temporary file or folder named ``name`` stands for, or None when ``name`` is
    not one of brainae's temporaries (``.NAME.brainae-tmp-PID-XXXXXXXX[SUFFIX]``).

    Example:
        >>> temp_owner(".out.nii.gz.brainae-tmp-123-ab12cd34.nii.gz")
        'out.nii.gz'
        >>> temp_owner(".out.nii.gz.tmp-mine") is None
        True
    """
    m = _TEMP_NAME.match(name)
    return m.group("name") if m else None


def is_temporary(name: str) -> bool:
    """True when ``name`` is a brainae temporary (see :func:`temp_owner`)."""
    return temp_owner(name) is not None


def temp_file(path: str | os.PathLike) -> Path:
    """Create (empty) and return a brainae temporary file beside ``path``: ``.NAME.brainae-tmp-PID-XXXXXXXX``
    with ``path``'s suffixes (writers that look at the extension still work). The caller renames it into place
    (:func:`publish`) or removes it; a killed caller's temporary is swept by the next writer of ``path``."""
    path = Path(path)
    suffix = "".join(s for s in path.suffixes if re.fullmatch(r"\.[A-Za-z0-9]+", s)) or ".tmp"
    fd, name = tempfile.mkstemp(prefix=_tmp_prefix(path), suffix=suffix, dir=path.parent)
    os.close(fd)
    return Path(name)


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):  # alive, owned by someone else (or no such pid at all)
        return True
    return True


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Remove the temporaries of ``path`` (``.NAME.brainae-tmp-PID-XXXXXXXX[SUFFIX]``, ``.NAME.brainae-old-...``)
    whose writing process is gone. Nothing else is touched: the whole name must match brainae's pattern for
    exactly this ``NAME``."""
    path = Path(path)
    removed: list[Path] = []
    parent = path.parent
    if not parent.is_dir():
        return removed
    try:
        entries = list(parent.iterdir())
    except OSError:
        return removed
    for entry in entries:
        m = _TEMP_NAME.match(entry.name)
        if not m or m.group("name") != path.name or _pid_alive(int(m.group("pid"))):
            continue
        with contextlib.suppress(OSError):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
            removed.append(entry)
    return removed


def clobbered(path: str | os.PathLike) -> BrainaeError:
    """The error of an output that another run created while this one worked (nothing is written)."""
    return BrainaeError(
        f"{path}: was created by another run while this one worked; nothing was written: add --force to "
        "replace it, or choose another output"
    )


def publish(tmp: str | os.PathLike, path: str | os.PathLike, *, replace: bool) -> None:
    """Rename the finished temporary file ``tmp`` to ``path``.

    ``replace=False`` never replaces a file: when ``path`` appeared meanwhile (another run writing the same
    output), ``tmp`` is removed and a :class:`BrainaeError` says so; ``replace=True`` replaces ``path``
    atomically (the caller has checked that it may).
    """
    import errno

    tmp, path = Path(tmp), Path(path)
    if replace:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)  # atomic and exclusive: fails when path exists
    except FileExistsError:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise clobbered(path) from None
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK, errno.ENOSYS):
            raise
        if path.exists() or path.is_symlink():  # a file system without hard links: check, then rename
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise clobbered(path) from None
        os.replace(tmp, path)
        return
    with contextlib.suppress(OSError):
        tmp.unlink()


def _os_error_in(exc: BaseException) -> OSError | None:
    """The OSError that caused ``exc`` (itself, its cause or context), if any; library wrappers such as
    safetensors' ``SafetensorError`` or Pillow's broken-stream errors hide the real one."""
    seen = 0
    cur: BaseException | None = exc
    while cur is not None and seen < 8:
        if isinstance(cur, OSError):
            return cur
        text = str(cur)
        if any(k in text for k in ("File too large", "No space left", "Permission denied", "Read-only")):
            return OSError(0, text.splitlines()[0][:160] if text else type(cur).__name__)
        cur = cur.__cause__ or cur.__context__
        seen += 1
    return None


def write_error(path: Path, exc: BaseException) -> BrainaeError | None:
    """A one-line :class:`BrainaeError` for an operating-system failure while writing ``path`` (else None)."""
    if isinstance(exc, BrainaeError):
        return None
    err = _os_error_in(exc)
    if err is None:
        return None
    import errno

    where = _owner_path(Path(err.filename) if getattr(err, "filename", None) else path)  # the user's name
    reason = err.strerror or str(err) or type(exc).__name__
    code = getattr(err, "errno", None)
    if code in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT) or "too large" in reason or "No space" in reason:
        fix = "free disk space (or raise the file-size limit) and run again"
    elif code in (errno.EACCES, errno.EPERM, errno.EROFS) or "ermission" in reason or "Read-only" in reason:
        fix = "choose an output folder you can write to"
    elif code == errno.ENOENT:
        fix = "check that the folder exists"
    else:
        fix = "check the output location and run again"
    return BrainaeError(f"{where}: cannot write ({reason}); {fix}; nothing was written")


def _owner_path(path: Path) -> Path:
    """``path`` with every brainae temporary in it named as the output it stands for (e.g. a file inside a
    temporary folder is named inside the output folder): error messages name the user's paths."""
    parts = []
    for part in path.parts:
        while (owner := temp_owner(part)) is not None:
            part = owner
        parts.append(part)
    return Path(*parts) if parts else path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, replace: bool | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed to ``path``, on error removed.

    The temporary (``.NAME.brainae-tmp-PID-XXXXXXXX`` + ``path``'s suffixes, so that writers that look at the
    extension still work) is brainae's own pattern; temporaries left by a killed earlier writer of ``path``
    are removed first. ``replace``: whether an existing ``path`` may be replaced; by default, only when it
    existed already when writing began (the caller checked it), so a file that another run created meanwhile
    is never replaced silently (:func:`publish`). An operating-system error (permission, full disk, file too
    large, read-only) becomes one :class:`BrainaeError` naming ``path``, never the temporary.
    """
    path = Path(path)
    if replace is None:
        replace = path.exists() or path.is_symlink()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(path)
        tmp = temp_file(path)
    except OSError as exc:
        raise write_error(path, exc) from None  # type: ignore[misc]
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
        publish(tmp, path, replace=replace)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        err = write_error(path, exc)
        if err is None and isinstance(exc, BrainaeError) and str(tmp) in str(exc):
            err = BrainaeError(str(exc).replace(str(tmp), str(path)))  # name the output, not the temporary
        if err is not None:
            raise err from None
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; on success it replaces ``path`` as a whole.

    An existing ``path`` is moved aside first and removed only once the new folder is in place, so a
    failure leaves either the old folder or nothing, never a half-written one. Temporary folders left by a
    killed earlier writer are removed first; operating-system errors become one :class:`BrainaeError`.
    Callers decide beforehand whether an existing ``path`` may be replaced (:func:`check_output`); a ``path``
    that did not exist then and was created meanwhile (another run writing the same output) is never replaced:
    the temporary is removed and a :class:`BrainaeError` says so.
    """
    path = Path(path)
    existed = path.exists() or path.is_symlink()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(path)
        tmp = Path(tempfile.mkdtemp(prefix=_tmp_prefix(path), dir=path.parent))
    except OSError as exc:
        raise write_error(path, exc) from None  # type: ignore[misc]
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())
        old = None
        if not existed and (path.is_symlink() or (path.exists() and not _empty_dir(path))):
            raise BrainaeError(
                f"{path}: was created by another run while this one worked; nothing was written: add --force "
                "to replace it, or choose another output"
            )
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=_tmp_prefix(path, _OLD_TAG), dir=path.parent))
            os.replace(path, old)  # an existing (empty) folder is replaced by rename
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        err = write_error(path, exc)
        if err is None and isinstance(exc, BrainaeError) and str(tmp) in str(exc):
            err = BrainaeError(str(exc).replace(str(tmp), str(path)))  # name the output, not the temporary
        if err is not None:
            raise err from None
        raise


def _empty_dir(path: Path) -> bool:
    try:
        return path.is_dir() and not any(path.iterdir())
    except OSError:
        return False


# ------------------------------------------------------------------------------ what --force may replace
#
# Every output folder brainae writes holds MARKER: its kind and the files it wrote (a manifest). --force
# replaces only such a folder of the same kind, with no file it did not write, and never a path that is,
# contains or lies inside an input.

MARKER = ".brainae-output.json"


def write_marker(folder: str | os.PathLike, kind: str) -> Path:
    """Write ``folder/MARKER``: ``kind`` and the manifest of the files now in ``folder`` (call it last)."""
    import json

    folder = Path(folder)
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.name != MARKER)
    from brainae import __version__

    text = json.dumps({"kind": kind, "version": __version__, "files": files}, indent=1) + "\n"
    (folder / MARKER).write_text(text)
    return folder / MARKER


def read_marker(folder: str | os.PathLike) -> dict | None:
    """The marker of a brainae-written folder, or None."""
    import json

    path = Path(folder) / MARKER
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("kind"), str) else None


def relation(out: str | os.PathLike, inp: str | os.PathLike) -> str | None:
    """How ``out`` relates to the input ``inp``: "is", "contains", "lies inside" or None.

    Links are followed: a symbolic or hard link to an input "is" that input.
    """
    a, b = Path(out).resolve(), Path(inp).resolve()
    if a == b:
        return "is"
    with contextlib.suppress(OSError):
        if a.exists() and b.exists() and os.path.samefile(a, b):
            return "is"
    if b in a.parents:
        return "lies inside"
    if a in b.parents:
        return "contains"
    return None


def check_same_grid(other: Volume, volume: Volume, what: str = "mask") -> None:
    """Refuse ``other`` (e.g. a mask) unless it lies on ``volume``'s grid: same shape and affine (1e-3)."""
    if other.data.shape != volume.data.shape or not np.allclose(other.affine, volume.affine, atol=1e-3):
        raise BrainaeError(
            f"{other.path}: {what} grid {other.header.shape} does not match {volume.path.name} "
            f"{volume.header.shape} (shape and affine must agree); resample the {what} onto the volume's grid"
        )


def check_not_input(out: str | os.PathLike, inputs: list, what: str = "output") -> None:
    """Refuse an output path that is, contains or lies inside one of ``inputs`` (files or folders: scans,
    masks, brain masks, models, data folders). The one check every command's outputs go through."""
    for inp in inputs:
        if inp is None:
            continue
        rel = relation(out, inp)
        if rel is None or (rel == "lies inside" and not Path(inp).is_dir()):
            continue
        text = {
            "is": "is the input",
            "contains": "contains the input",
            "lies inside": "lies inside the input",
        }
        raise BrainaeError(
            f"{out}: the {what} {text[rel]} {inp}; inputs are never replaced, choose another output"
        )


def check_distinct(outputs: list) -> None:
    """Refuse two outputs of one command that are the same file (e.g. ``-o X --calibrated X``)."""
    seen: dict[Path, Path] = {}
    for out in outputs:
        if out is None:
            continue
        key = Path(out).resolve()
        if key in seen:
            raise BrainaeError(
                f"{out}: named for two different outputs of this command; give each output its own file"
            )
        seen[key] = Path(out)


def check_output_file(
    out: str | os.PathLike,
    inputs: list,
    *,
    force: bool,
    is_ours: Callable[[Path], bool],
    what: str,
    option: str = "output",
) -> Path:
    """Decide whether the output file ``out`` may be written (call before any work).

    Refused: ``out`` is, contains or lies inside an input (:func:`check_not_input`); ``out`` is a folder;
    ``out`` exists without ``force``; with ``force``, ``out`` is not ``what`` (``is_ours`` says whether
    brainae wrote it: ``--force`` replaces only brainae's own files).
    """
    out = Path(out)
    check_not_input(out, inputs, "output")
    if out.is_dir():
        raise BrainaeError(f"{out}: is a folder; {option} names the file to write")
    if out.exists() or out.is_symlink():
        if not force:
            raise BrainaeError(
                f"{out}: already exists; add --force to replace it, or choose another {option}"
            )
        if not is_ours(out):
            raise BrainaeError(
                f"{out}: exists and is not {what}, so --force will not replace it; choose another {option}, "
                "or move the file away yourself"
            )
    return out


def foreign_files(folder: Path, marker: dict) -> list[Path]:
    """Files in ``folder`` that its manifest does not list (sub-folders with their own marker excepted)."""
    listed = set(marker.get("files", []))
    found: list[Path] = []
    for root, dirs, files in os.walk(folder):
        rootp = Path(root)
        keep = []
        for d in dirs:
            sub = rootp / d
            if read_marker(sub) is not None or is_temporary(d):
                continue  # another brainae output (e.g. EVAL/stats), or a temporary
            keep.append(d)
        dirs[:] = keep
        for name in files:
            p = rootp / name
            rel = str(p.relative_to(folder))
            if name == MARKER or rel in listed or is_temporary(name):
                continue
            found.append(p)
    return sorted(found)


def has_tag(path: str | os.PathLike, tag: str, head: int) -> bool:
    """True when the first ``head`` bytes of the file at ``path`` hold ``tag`` (False when it cannot be read)."""
    try:
        with open(path, "rb") as fh:
            start = fh.read(head)
    except OSError:
        return False
    return tag.encode() in start


def check_html_output(
    out: Path,
    force: bool,
    is_ours: Callable[[Path], bool],
    *,
    what: str,
    name_it: str,
    other: str,
    example: str,
) -> None:
    """Refuse an HTML file ``out`` that is a folder, or that exists (without ``force``, or ``is_ours`` says
    brainae did not write it: ``force`` replaces only its own pages). ``what``, ``name_it``, ``other`` and
    ``example`` word the messages (e.g. "a report that brainae wrote", "-o names", "-o", "report.html")."""
    if out.is_dir():
        raise BrainaeError(f"{out}: is a folder; {name_it} the HTML file to write (e.g. {example})")
    if out.exists() or out.is_symlink():
        if not force:
            raise BrainaeError(f"{out}: already exists; add --force to replace it, or choose another {other}")
        if not is_ours(out):
            raise BrainaeError(
                f"{out}: exists and is not {what}, so --force will not replace it; choose another {other}"
            )


def check_output(
    out: str | os.PathLike, kind: str, inputs: list, *, force: bool, what: str = "output folder"
) -> bool:
    """Decide whether the output folder ``out`` may be written; True when it exists (and may be replaced).

    Raises:
        BrainaeError: ``out`` is, contains or lies inside an input; ``out`` exists and ``force`` is off;
            with ``force``, ``out`` is not a brainae-written ``kind`` folder or holds files brainae did not
            write (they are named).
    """
    out = Path(out)
    check_not_input(out, inputs, what)
    if not out.exists() and not out.is_symlink():
        return False
    if not out.is_dir():
        raise BrainaeError(f"{out}: is a file, not a folder; choose another output folder")
    if not any(out.iterdir()):
        return False
    marker = read_marker(out)
    if marker is None or marker.get("kind") != kind:
        found = "a brainae " + marker["kind"] + " folder" if marker else "not a folder written by brainae"
        raise BrainaeError(
            f"{out}: exists and is {found}; brainae replaces only a {kind} folder it wrote itself (marked by "
            f"{MARKER}), so choose another output, or move the folder away yourself"
        )
    if not force:
        raise BrainaeError(f"{out}: already exists; add --force to replace it, or choose another output")
    extra = foreign_files(out, marker)
    if extra:
        names = ", ".join(str(p.relative_to(out)) for p in extra[:3]) + (" ..." if len(extra) > 3 else "")
        raise BrainaeError(
            f"{out}: holds {len(extra)} file(s) that brainae did not write ({names}), so --force will not "
            "replace it; move them away or choose another output"
        )
    return True
