"""Fuzzing the commands with malformed inputs (issue 27): headers, dtypes, shapes, affines, masks, model files.

Several hundred seeded cases run through ``denoise``, ``inpaint``, ``anomaly``, ``view`` and ``info`` in this
process (typer's runner, tiny volumes, a tiny slice autoencoder and the biharmonic fill, so that a case that
succeeds costs milliseconds). Every case must either succeed (and write its output) or fail with exactly one
``error:`` line; never a traceback, and never a change to any input file (bytes and modification time).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

SHAPE = (14, 16, 12)
CASES = 240
SEED = 27


def _head(rng: np.random.Generator, shape=SHAPE) -> np.ndarray:
    p, s, r = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    rad = np.sqrt(p**2 + s**2 + r**2)
    vol = np.where(rad < 0.7, 100.0, 0.0) + np.where((rad >= 0.7) & (rad < 0.9), 40.0, 0.0)
    return np.clip(vol + rng.normal(0, 3, shape) * (rad < 0.9), 0, None)


def _affine(zooms=(2.0, 2.0, 2.0)) -> np.ndarray:
    return np.diag([*zooms, 1.0])


def _save(path: Path, data: np.ndarray, affine: np.ndarray | None = None, **header) -> Path:
    img = nib.Nifti1Image(data, _affine() if affine is None else affine)
    for key, value in header.items():
        img.header[key] = value
    nib.save(img, str(path))
    return path


def _raw_header(path: Path, data: np.ndarray, **fields) -> Path:
    """A gzipped NIfTI-1 written byte by byte with header ``fields`` that nibabel would refuse to write."""
    img = nib.Nifti1Image(np.asarray(data, np.float32), _affine())
    hdr = img.header
    hdr["qform_code"], hdr["sform_code"] = 0, 1
    for key, value in fields.items():
        hdr[key] = value
    hdr["vox_offset"] = 352
    body = hdr.binaryblock + b"\0" * 4 + np.asarray(data, "<f4").tobytes(order="F")
    path.write_bytes(gzip.compress(body))
    return path


# ------------------------------------------------------------------------------------ malformed scans


def _scan_makers() -> list[tuple[str, Callable[[Path, np.random.Generator], Path]]]:
    """(name, make(path, rng) -> file) for scans: a few valid, most malformed."""

    def valid(dtype):
        def make(path, rng):
            data = _head(rng)
            if np.dtype(dtype).kind in "iu":
                data = np.clip(data, 0, np.iinfo(dtype).max)
            return _save(path, data.astype(dtype))

        return make

    def shaped(shape):
        return lambda path, rng: _save(path, rng.uniform(0, 100, shape).astype(np.float32))

    def nonfinite(value):
        def make(path, rng):
            data = _head(rng).astype(np.float32)
            data[tuple(rng.integers(0, s) for s in SHAPE)] = value
            return _save(path, data)

        return make

    def affine(matrix):
        return lambda path, rng: _raw_header(
            path, _head(rng), srow_x=matrix[0], srow_y=matrix[1], srow_z=matrix[2]
        )

    def header(**fields):
        return lambda path, rng: _raw_header(path, _head(rng), **fields)

    def truncated(keep):
        def make(path, rng):
            _save(path, _head(rng).astype(np.int16))
            raw = path.read_bytes()
            path.write_bytes(raw[: max(1, int(len(raw) * keep))])
            return path

        return make

    def raw_bytes(n, gz):
        def make(path, rng):
            blob = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
            path.write_bytes(gzip.compress(blob) if gz else blob)
            return path

        return make

    def uncompressed_truncated(path, rng):
        plain = path.with_name(path.name.replace(".nii.gz", ".nii"))
        _save(plain, _head(rng).astype(np.float32))
        raw = plain.read_bytes()
        plain.write_bytes(raw[: len(raw) // 2])
        return plain

    def constant(value):
        return lambda path, rng: _save(path, np.full(SHAPE, value, np.float32))

    def complex_(path, rng):
        return _save(path, (_head(rng) + 1j).astype(np.complex64))

    def rgb(path, rng):
        data = np.zeros(SHAPE, dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
        return _save(path, data)

    def folder(path, rng):
        path.mkdir()
        return path

    def wrong_name(path, rng):
        other = path.with_name(path.name.replace(".nii.gz", ".txt"))
        _save(path, _head(rng).astype(np.int16))
        path.rename(other)
        return other

    def dangling(path, rng):
        path.symlink_to(path.with_name("nowhere.nii.gz"))
        return path

    def extreme(scale):
        return lambda path, rng: _save(path, (_head(rng) * scale).astype(np.float32))

    return [
        ("int16", valid(np.int16)),
        ("uint8", valid(np.uint8)),
        ("float64", valid(np.float64)),
        ("int32", valid(np.int32)),
        ("2d", shaped((14, 16))),
        ("4d", shaped((14, 16, 12, 3))),
        ("4d-single", shaped((14, 16, 12, 1))),
        ("5d", shaped((6, 6, 6, 2, 2))),
        ("thin", shaped((1, 16, 12))),
        ("line", shaped((1, 1, 12))),
        ("one-voxel", shaped((1, 1, 1))),
        ("nan", nonfinite(np.nan)),
        ("inf", nonfinite(np.inf)),
        ("-inf", nonfinite(-np.inf)),
        ("zero-affine", affine(np.zeros((3, 4)))),
        ("nan-affine", affine(np.full((3, 4), np.nan))),
        ("inf-affine", affine(np.array([[np.inf, 0, 0, 0], [0, 2, 0, 0], [0, 0, 2, 0]]))),
        ("singular-affine", affine(np.array([[2.0, 2, 0, 0], [2, 2, 0, 0], [0, 0, 2, 0]]))),
        ("flat-axis-affine", affine(np.array([[2.0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 2, 0]]))),
        ("oblique-affine", affine(np.array([[1.4, 1.4, 0, 0], [-1.4, 1.4, 0, 0], [0, 0, 2, 0]]))),
        ("huge-dims", header(dim=[3, 30000, 30000, 30000, 1, 1, 1, 1])),
        ("big-dims", header(dim=[3, 1000, 1000, 1000, 1, 1, 1, 1])),
        ("negative-dim", header(dim=[3, -14, 16, 12, 1, 1, 1, 1])),
        ("zero-dim", header(dim=[3, 0, 16, 12, 1, 1, 1, 1])),
        ("ndim-9", header(dim=[9, 14, 16, 12, 1, 1, 1, 1])),
        ("nan-slope", header(scl_slope=np.nan, scl_inter=0.0)),
        ("inf-slope", header(scl_slope=np.inf)),
        ("huge-offset", header(vox_offset=1e12)),
        ("bad-datatype", header(datatype=1234)),
        ("nan-pixdim-qform", header(qform_code=1, sform_code=0, pixdim=[1, np.nan, 2, 2, 1, 1, 1, 1])),
        ("zero-pixdim-qform", header(qform_code=1, sform_code=0, pixdim=[1, 0, 0, 0, 1, 1, 1, 1])),
        ("truncated-10", truncated(0.1)),
        ("truncated-60", truncated(0.6)),
        ("truncated-98", truncated(0.98)),
        ("truncated-nii", uncompressed_truncated),
        ("random-bytes", raw_bytes(400, False)),
        ("random-gz", raw_bytes(4000, True)),
        ("empty", raw_bytes(0, False)),
        ("constant", constant(5.0)),
        ("zeros", constant(0.0)),
        ("negative", constant(-3.0)),
        ("complex", complex_),
        ("rgb", rgb),
        ("folder", folder),
        ("not-nifti-name", wrong_name),
        ("dangling-link", dangling),
        ("huge-values", extreme(1e30)),
        ("tiny-values", extreme(1e-30)),
    ]


# ------------------------------------------------------------------------------------ malformed masks


def _mask_makers() -> list[tuple[str, Callable[[Path, np.random.Generator, Path], Path]]]:
    """(name, make(path, rng, scan) -> file) for masks of ``scan``."""

    def on_grid(kind):
        def make(path, rng, scan):
            img = nib.load(str(scan))
            shape = img.shape[:3]
            if kind == "box":
                data = np.zeros(shape, np.uint8)
                data[4:8, 5:9, 3:7] = 1
            elif kind == "random":
                data = (rng.uniform(size=shape) > 0.8).astype(np.uint8)
            elif kind == "full":
                data = np.ones(shape, np.uint8)
            elif kind == "empty":
                data = np.zeros(shape, np.uint8)
            else:  # float with NaN
                data = rng.uniform(size=shape).astype(np.float32)
                data[0, 0, 0] = np.nan
            return _save(path, data, img.affine)

        return make

    def wrong_shape(path, rng, scan):
        return _save(path, np.ones((5, 5, 5), np.uint8))

    def wrong_affine(path, rng, scan):
        img = nib.load(str(scan))
        data = np.zeros(img.shape[:3], np.uint8)
        data[4:8, 5:9, 3:7] = 1
        return _save(path, data, img.affine @ np.diag([1, 1, 1.5, 1]))

    def four_d(path, rng, scan):
        return _save(path, np.ones((*SHAPE, 2), np.uint8))

    def garbage(path, rng, scan):
        path.write_bytes(b"\x1f\x8bnot a mask")
        return path

    def missing(path, rng, scan):
        return path

    def nan_affine(path, rng, scan):
        return _raw_header(path, np.ones(SHAPE), srow_x=[np.nan] * 4)

    return [
        ("box", on_grid("box")),
        ("random", on_grid("random")),
        ("full", on_grid("full")),
        ("empty", on_grid("empty")),
        ("nan-mask", on_grid("nan")),
        ("wrong-shape", wrong_shape),
        ("wrong-affine", wrong_affine),
        ("4d-mask", four_d),
        ("garbage-mask", garbage),
        ("missing-mask", missing),
        ("nan-affine-mask", nan_affine),
    ]


# ------------------------------------------------------------------------------------ malformed models


def _tiny_model(path: Path, *, nan: bool = False) -> Path:
    from brainae.checkpoint import save_checkpoint
    from brainae.models import build_model
    from brainae.volume import Preprocessing

    torch.manual_seed(0)
    model = build_model("skip-cae", latent_channels=4)
    if nan:
        with torch.no_grad():
            next(model.parameters()).view(-1)[:3] = float("nan")
    return save_checkpoint(path, model, preprocessing=Preprocessing(size=32).to_dict())


def _model_makers(good: Path) -> list[tuple[str, Callable[[Path, np.random.Generator], Path]]]:
    """(name, make(path, rng) -> file) for model files derived from the tiny checkpoint ``good``."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from brainae.checkpoint import METADATA_KEY

    with safe_open(str(good), framework="pt") as f:
        meta = json.loads(f.metadata()[METADATA_KEY])
        state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118

    def crafted(change: Callable[[dict, dict], tuple[dict, dict]]):
        def make(path, rng):
            m, s = change(json.loads(json.dumps(meta)), dict(state))
            save_file(s, str(path), metadata={METADATA_KEY: m if isinstance(m, str) else json.dumps(m)})
            return path

        return make

    def kwargs(**kw):
        return crafted(lambda m, s: ({**m, "arch_kwargs": {**m["arch_kwargs"], **kw}}, s))

    def truncated(path, rng):
        raw = good.read_bytes()
        path.write_bytes(raw[: int(len(raw) * rng.uniform(0.05, 0.95))])
        return path

    def random_bytes(path, rng):
        path.write_bytes(rng.integers(0, 256, 3000, dtype=np.uint8).tobytes())
        return path

    def empty(path, rng):
        path.write_bytes(b"")
        return path

    def no_metadata(path, rng):
        save_file(state, str(path))
        return path

    def nan_weights(path, rng):
        return _tiny_model(path, nan=True)

    def pickle_file(path, rng):
        torch.save({"a": 1}, str(path))
        return path

    def h5_garbage(path, rng):
        path.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)
        return path

    def npz_garbage(path, rng):
        np.savez(path, meta=np.frombuffer(b"[1, 2]", np.uint8), volumes=np.zeros(3))
        return path

    def dropped_tensor(m, s):
        s.pop(next(iter(s)))
        return m, s

    def reshaped_tensor(m, s):
        key = next(iter(s))
        s[key] = s[key].reshape(-1)
        return m, s

    def int_tensor(m, s):
        key = next(iter(s))
        s[key] = torch.zeros(s[key].shape, dtype=torch.int32)
        return m, s

    return [
        ("truncated", truncated),
        ("random", random_bytes),
        ("empty", empty),
        ("no-metadata", no_metadata),
        ("nan-weights", nan_weights),
        ("pickle", pickle_file),
        ("bad-json", crafted(lambda m, s: ("{not json", s))),
        ("json-list", crafted(lambda m, s: ("[1, 2]", s))),
        ("unknown-arch", crafted(lambda m, s: ({**m, "arch": "banana"}, s))),
        ("huge-latent", kwargs(latent_channels=1_000_000)),
        ("negative-latent", kwargs(latent_channels=-4)),
        ("text-latent", kwargs(latent_channels="four")),
        ("nan-latent", kwargs(latent_channels=float("nan"))),
        ("newer-format", crafted(lambda m, s: ({**m, "format": 999}, s))),
        ("bad-preprocessing", crafted(lambda m, s: ({**m, "preprocessing": "sagittal"}, s))),
        ("bad-size", crafted(lambda m, s: ({**m, "preprocessing": {**m["preprocessing"], "size": -3}}, s))),
        (
            "huge-size",
            crafted(lambda m, s: ({**m, "preprocessing": {**m["preprocessing"], "size": 1 << 20}}, s)),
        ),
        (
            "nan-fov",
            crafted(lambda m, s: ({**m, "preprocessing": {**m["preprocessing"], "fov_mm": float("nan")}}, s)),
        ),
        (
            "unknown-task",
            crafted(lambda m, s: ({**m, "preprocessing": {"kind": "volumetric", "task": "x"}}, s)),
        ),
        ("bad-normative", crafted(lambda m, s: ({**m, "normative": {"mean": "a", "std": 1}}, s))),
        ("nan-normative", crafted(lambda m, s: ({**m, "normative": {"mean": 0.1, "std": float("nan")}}, s))),
        ("dropped-tensor", crafted(dropped_tensor)),
        ("reshaped-tensor", crafted(reshaped_tensor)),
        ("int-tensor", crafted(int_tensor)),
        ("h5-garbage", h5_garbage),
        ("npz-garbage", npz_garbage),
    ]


# ---------------------------------------------------------------------------------------------- the run


def _digest(paths: list[Path]) -> dict[str, str]:
    out = {}
    for root in paths:
        files = [root] if not root.is_dir() else sorted(p for p in root.rglob("*") if p.is_file())
        for f in files:
            if f.is_file() and not f.is_symlink():
                out[str(f)] = hashlib.sha256(f.read_bytes()).hexdigest() + f":{f.stat().st_mtime_ns}"
    return out


def _check(result, case: str, outputs: list[Path]) -> str | None:
    """What is wrong with one run (None: nothing)."""
    text = result.output
    if "Traceback" in text or (result.exception is not None and not isinstance(result.exception, SystemExit)):
        return f"{case}: traceback / {type(result.exception).__name__}: {result.exception}"
    lines = [ln for ln in text.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    if result.exit_code == 0:
        if errors:
            return f"{case}: exit 0 with an error line: {errors[0]}"
        missing = [str(p) for p in outputs if not p.exists()]
        return f"{case}: exit 0 but no {missing}" if missing else None
    if len(errors) != 1:
        return f"{case}: exit {result.exit_code} with {len(errors)} error lines: {text[-400:]!r}"
    others = [ln for ln in lines if not ln.startswith(("error:", "warning:"))]
    if others:
        return f"{case}: lines other than error/warning: {others[:2]}"
    if "unexpected failure" in errors[0]:
        return f"{case}: a failure brainae did not foresee: {errors[0]}"
    if len(errors[0]) < 30:
        return f"{case}: error line too terse to name the file and the fix: {errors[0]}"
    if any(p.exists() for p in outputs):
        return f"{case}: failed but wrote {[str(p) for p in outputs if p.exists()]}"
    return None


def test_malformed_inputs_never_give_a_traceback_or_change_an_input(tmp_path, monkeypatch):
    from brainae.cli import app

    monkeypatch.setenv("COLUMNS", "400")
    rng = np.random.default_rng(SEED)
    runner = CliRunner()
    good_model = _tiny_model(tmp_path / "good.safetensors")
    scans, masks, models = _scan_makers(), _mask_makers(), _model_makers(good_model)
    problems: list[str] = []
    counts: dict[str, int] = {}
    spent: dict[str, float] = {}
    start = time.perf_counter()
    for i in range(CASES):
        case_dir = tmp_path / f"c{i:03d}"
        case_dir.mkdir()
        command = ("denoise", "inpaint", "anomaly", "view", "info")[i % 5]
        good_scan = _save(case_dir / "good.nii.gz", _head(rng).astype(np.int16))
        # one malformed input per case; the others are well formed
        slot = (
            command == "info"
            and "model"
            or rng.choice(
                {
                    "inpaint": ["scan", "mask"],
                    "anomaly": ["scan", "model", "mask"],
                    "denoise": ["scan", "model"],
                }.get(command, ["scan"])
            )
        )
        scan, model, mask = good_scan, good_model, None
        if slot == "scan":
            name, make = scans[int(rng.integers(len(scans)))]
            scan = make(case_dir / "scan.nii.gz", rng)
        elif slot == "model":
            name, make = models[int(rng.integers(len(models)))]
            suffix = {"h5-garbage": ".h5", "npz-garbage": ".npz"}.get(name, ".safetensors")
            model = make(case_dir / f"model{suffix}", rng)
        if command in ("inpaint", "anomaly"):
            mname, mmake = masks[int(rng.integers(len(masks)))] if slot == "mask" else masks[0]
            mask = mmake(case_dir / "mask.nii.gz", rng, good_scan if slot != "scan" else good_scan)
            name = mname if slot == "mask" else name
        out = case_dir / "out.nii.gz"
        if command == "denoise":
            args, outputs = ["denoise", scan, out, "--model", model, "--device", "cpu"], [out]
        elif command == "inpaint":
            args, outputs = ["inpaint", scan, mask, out, "--model", "biharmonic"], [out]
        elif command == "anomaly":
            args = ["anomaly", scan, "--model", model, "-o", out, "--device", "cpu", "--json"]
            outputs = [out]
            if slot == "mask" or rng.uniform() < 0.3:  # a slice autoencoder takes no brain mask: refused
                args += ["--brain-mask", mask]
        elif command == "view":
            out = case_dir / "view.html"
            args, outputs = ["view", scan, "-o", out], [out]
            if rng.uniform() < 0.5:
                args.insert(2, good_scan)
        else:
            if slot == "model":
                args, outputs = ["info", model], []
            else:
                args, outputs = (
                    ["info", models[int(rng.integers(len(models)))][1](case_dir / "m.safetensors", rng)],
                    [],
                )
            name = Path(args[1]).name
        inputs = [p for p in (scan, mask, model, good_scan) if p is not None and Path(p).exists()]
        inputs = [p for p in inputs if Path(p).is_relative_to(tmp_path)]  # the tiny model: never written
        before = _digest(inputs)
        t0 = time.perf_counter()
        result = runner.invoke(app, [str(a) for a in args])
        spent[command] = spent.get(command, 0.0) + time.perf_counter() - t0
        label = f"#{i} {command} {slot}={name}"
        problem = _check(result, label, outputs)
        if problem is None and _digest(inputs) != before:
            problem = f"{label}: an input changed"
        if problem is None and [p.name for p in case_dir.glob(".*")]:
            problem = f"{label}: temporaries left: {[p.name for p in case_dir.glob('.*')]}"
        if problem:
            problems.append(problem)
        key = "ok" if result.exit_code == 0 else "refused"
        counts[key] = counts.get(key, 0) + 1
    seconds = time.perf_counter() - start
    assert not problems, "\n".join(problems[:20])
    assert counts.get("ok", 0) >= 20 and counts.get("refused", 0) >= 100, counts  # both paths exercised
    print(f"fuzz: {CASES} cases ({counts}) in {seconds:.1f} s; by command: {spent}")


@pytest.mark.parametrize("name", ["zero-affine", "nan-affine", "huge-dims", "big-dims", "complex"])
def test_fuzz_makers_make_what_they_say(name, tmp_path):
    """The generators make genuinely malformed files (a maker that wrote a valid file would test nothing)."""
    from brainae.errors import BrainaeError
    from brainae.io import load_volume

    make = dict(_scan_makers())[name]
    path = make(tmp_path / "x.nii.gz", np.random.default_rng(0))
    assert path.exists() and os.path.getsize(path) > 0
    with pytest.raises(BrainaeError):
        load_volume(path)
