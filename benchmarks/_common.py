"""What the benchmark scripts share: the held-out split, cached brain masks, the brainae API lookup, JSON output."""

from __future__ import annotations

import json
import os
import sys
import types
import zlib
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "ixi-t1-2mm"
CASE = ROOT.parent / "shared" / "data" / "lesion-dev"  # the BraTS case (never shipped)
CASE_T1 = ROOT.parent / "shared" / "data" / "lesion-dev-t1"  # a metastasis on plain T1 (never shipped)
SPLIT = ROOT / "src" / "brainae" / "pretrained" / "ixi-split.json"
MASK_CACHE = Path("/tmp/brainae-bench-masks")


def split_files(name: str = "test") -> list[Path]:
    """The volumes of one split of ``ixi-split.json`` (in the file's order)."""
    ids = json.loads(SPLIT.read_text())[name]
    return [DATA / f"{i}.nii.gz" for i in ids]


def brainae_api(name: str):
    """The public ``brainae.<name>`` function, or None while it does not exist (never a submodule)."""
    import brainae

    try:
        fn = getattr(brainae, name, None)
    except Exception as exc:  # the API module exists but does not import: report it as pending
        print(f"[{Path(sys.argv[0]).stem}] brainae.{name}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return None
    return fn if callable(fn) and not isinstance(fn, types.ModuleType) else None


def cached_brain_mask(vol, cache: Path = MASK_CACHE, method: str = "deepbet") -> np.ndarray:
    """The volume's brain mask (deepbet), cached as ``<cache>/<id>.<method>.npy``."""
    from brainae.brainmask import brain_mask

    cache.mkdir(parents=True, exist_ok=True)
    path = cache / f"{vol.id}.{method}.npy"
    if path.exists():
        m = np.load(path)
        if m.shape == vol.data.shape:
            return m
    m = brain_mask(vol.data, vol.zooms, method=method)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp.npy")
    np.save(tmp, m)
    os.replace(tmp, path)  # atomic: benchmarks running side by side share the cache
    return m


class Pending(Exception):
    """The method is not available yet (reported, not fatal)."""


def api_call(fn, *args, **kwargs):
    """Call a brainae API function; a BrainaeError (e.g. its default model not shipped yet) means pending."""
    from brainae.errors import BrainaeError

    try:
        return fn(*args, **kwargs)
    except BrainaeError as exc:
        raise Pending(f"brainae API raised: {exc}") from None


def seed_for(*parts) -> int:
    return zlib.crc32("/".join(map(str, parts)).encode())


def mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return round(float(np.mean(values)), 3) if values else None


def _arr(img) -> np.ndarray:
    return np.asarray(img.dataobj, dtype=np.float32)


def emit(report: dict, out: str | None) -> None:
    """Print the report as strict JSON (and write it to ``out`` when given)."""
    text = json.dumps(report, indent=2, allow_nan=False)
    if out:
        Path(out).write_text(text + "\n")
    print(text)
