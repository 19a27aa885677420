"""Interactive 3-D views of volumes as one self-contained HTML page (NiiVue embedded: no server, works offline).

A page shows a base volume (the scan) and other volumes either

- **beside** it: one pane per volume (a denoised or inpainted result), all panes sharing the crosshair,
  the zoom and the 3-D rotation; or
- as **overlays** on it: colour maps (an anomaly map, a lesion mask), each with a threshold slider (voxels
  below the threshold are transparent), an opacity slider and a show/hide switch.

Each pane shows the three orthogonal slices and a 3-D volume rendering (a menu switches to one view).

The volumes travel inside the page as gzipped NIfTI (base64) with their affines, so NiiVue places them in
world coordinates: scans are stored at 8 bits (the 0.1 % brightest voxels clipped; the header's scaling
keeps the original intensity units, and all scans of a page share one intensity window unless their ranges
differ by more than a factor 2), maps at 8 bits over their full range (``map_bits=16`` for finer steps of
the threshold and the values read at the cursor, at about twice the size). A
volume with more than ``max_voxels`` voxels is reduced by 2 along its longest axis until it fits (block
mean for scans, block maximum for non-negative maps, so that small hot spots stay visible); the page says
so. The viewer's own code travels gzipped too (1.1 MB). Measured (``benchmarks/view.py``): a 2 mm scan with
a result beside it makes a page of about 3.6 MB; a 256 x 256 x 150 scan with 2-4 % noise 20.6-22.0 MB with a
result beside it, 18-19 MB with two maps on it (noise compresses badly).

Example:
    >>> from brainae.io import load_volume
    >>> scan = load_volume("scan.nii.gz")  # doctest: +SKIP
    >>> den = load_volume("denoised.nii.gz")  # doctest: +SKIP
    >>> write_view("view.html", layer(scan), [layer(den, "denoised")], mode="beside")  # doctest: +SKIP
"""

from __future__ import annotations

import base64
import functools
import gzip
import html
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from brainae.errors import BrainaeError

__all__ = [
    "DEFAULT_MAX_VOXELS",
    "MODES",
    "Layer",
    "ViewSummary",
    "build_page",
    "downsample_factors",
    "is_view_page",
    "layer",
    "reduce_blocks",
    "quantize",
    "write_view",
]

MODES = ("beside", "overlay")
"""How the volumes after the first are shown: in panes beside it, or as colour overlays on it."""

DEFAULT_MAX_VOXELS = 256 * 256 * 256
"""Voxels kept per volume in a page (a 1 mm head scan fits without reduction)."""

GENERATOR = '<meta name="generator" content="brainae view">'
"""Marks a page that :func:`write_view` wrote (``--force`` replaces only such pages)."""

OVERLAY_COLORMAPS = ("warm", "cool", "green", "violet")
SCAN_CLIP_PERCENTILE = 99.9


@dataclass(frozen=True)
class Layer:
    """One volume to show: a name, a 3-D array and its voxel-to-world affine (mm).

    Attributes:
        name: shown in the page (a file name, "denoised", "anomaly map").
        data: 3-D array (any real dtype).
        affine: 4 x 4 voxel-to-world matrix.
        threshold: for an overlay, the initial threshold (default: the 99th percentile of its non-zero
            voxels, 0.5 for a mask).
        visible: for an overlay, whether it is shown when the page opens.
    """

    name: str
    data: np.ndarray
    affine: np.ndarray
    threshold: float | None = None
    visible: bool = True


def layer(volume, name: str | None = None, *, data: np.ndarray | None = None, **kwargs) -> Layer:
    """A :class:`Layer` from a :class:`~brainae.io.Volume` (its file name by default; ``data`` replaces its
    voxels, e.g. a result on the volume's grid)."""
    return Layer(
        name=name or volume.path.name,
        data=volume.data if data is None else data,
        affine=volume.affine,
        **kwargs,
    )


@dataclass
class ViewSummary:
    """What :func:`write_view` wrote: the page, its size, and one line per volume."""

    path: Path
    bytes: int
    volumes: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------- array preparation


def downsample_factors(shape: Sequence[int], max_voxels: int) -> tuple[int, int, int]:
    """Integer reduction factors per axis (powers of 2, the longest axis first) so that the reduced volume has
    at most ``max_voxels`` voxels.

    Example:
        >>> downsample_factors((256, 256, 150), 256**3)
        (1, 1, 1)
        >>> downsample_factors((512, 512, 300), 256**3)
        (2, 2, 2)
        >>> downsample_factors((512, 512, 100), 256**3)
        (2, 1, 1)
    """
    if max_voxels < 1:
        raise BrainaeError(f"max_voxels must be at least 1, got {max_voxels}")
    f = [1, 1, 1]

    def size(i: int) -> int:
        return -(-int(shape[i]) // f[i])

    while np.prod([size(i) for i in range(3)]) > max_voxels:
        axis = max(range(3), key=size)
        if size(axis) == 1:
            break
        f[axis] *= 2
    return (f[0], f[1], f[2])


def reduce_blocks(
    data: np.ndarray, affine: np.ndarray, factors: Sequence[int], *, how: str = "mean"
) -> tuple[np.ndarray, np.ndarray]:
    """Reduce ``data`` by integer ``factors`` per axis (``how`` = "mean" or "max" over each block; edge
    voxels repeated to fill the last block) and the affine to match (voxel centres stay in place).

    Example:
        >>> a, aff = reduce_blocks(np.arange(8.0).reshape(2, 2, 2), np.eye(4), (2, 1, 1))
        >>> a.shape, float(a[0, 0, 0]), float(aff[0, 0]), float(aff[0, 3])
        ((1, 2, 2), 2.0, 2.0, 0.5)
    """
    if how not in ("mean", "max"):
        raise BrainaeError(f"how must be 'mean' or 'max', got {how!r}")
    f = [int(x) for x in factors]
    if f == [1, 1, 1]:
        return data, np.asarray(affine, dtype=np.float64)
    pad = [(0, (-s) % k) for s, k in zip(data.shape, f)]
    padded = np.pad(data, pad, mode="edge")
    n = [s // k for s, k in zip(padded.shape, f)]
    blocks = padded.reshape(n[0], f[0], n[1], f[1], n[2], f[2])
    out = blocks.mean(axis=(1, 3, 5)) if how == "mean" else blocks.max(axis=(1, 3, 5))
    scale = np.diag([*f, 1]).astype(np.float64)
    scale[:3, 3] = [(k - 1) / 2 for k in f]
    return out.astype(data.dtype if how == "max" else np.float32), np.asarray(affine, np.float64) @ scale


def quantize(data: np.ndarray, lo: float, hi: float, dtype: str = "uint8") -> tuple[np.ndarray, float, float]:
    """``data`` clipped to [lo, hi] and mapped onto the integers of ``dtype``; returns (ints, slope, inter)
    with ``ints * slope + inter`` approximating the clipped data (the NIfTI header's scaling).

    Example:
        >>> q, slope, inter = quantize(np.array([0.0, 0.5, 1.0, 2.0]), 0.0, 1.0)
        >>> q.tolist(), round(slope * 255, 6), inter
        ([0, 128, 255, 255], 1.0, 0.0)
    """
    top = np.iinfo(np.dtype(dtype)).max
    lo, hi = float(lo), float(hi)
    if not hi > lo:
        return np.zeros(data.shape, dtype=dtype), 1.0, lo
    scaled = (np.clip(data.astype(np.float64), lo, hi) - lo) * (top / (hi - lo))
    return np.rint(scaled).astype(dtype), (hi - lo) / top, lo


def _scan_windows(arrays: list[np.ndarray]) -> tuple[list[tuple[float, float]], bool]:
    """(lo, hi) per scan and whether they share one window (ranges within a factor 2 of each other)."""
    wins = []
    for a in arrays:
        lo = float(a.min())
        hi = float(np.percentile(a, SCAN_CLIP_PERCENTILE))
        wins.append((lo, hi if hi > lo else float(a.max())))
    spans = [hi - lo for lo, hi in wins if hi > lo]
    shared = bool(spans) and max(spans) <= 2 * min(spans)
    if shared:
        joint = (min(w[0] for w in wins), max(w[1] for w in wins))
        wins = [joint] * len(wins)
    return wins, shared


def _is_small_ints(a: np.ndarray) -> bool:
    return bool(a.min() >= 0 and a.max() <= 255 and np.all(np.mod(a, 1) == 0))


def _default_threshold(a: np.ndarray) -> float:
    if _is_small_ints(a) and a.max() <= 1:
        return 0.5
    nz = a[a > 0]
    return float(np.percentile(nz, 99)) if nz.size else 0.0


# ------------------------------------------------------------------------------------------------- page


def _encode(data: np.ndarray, affine: np.ndarray, slope: float, inter: float) -> str:
    from brainae.io import nifti_gz_bytes

    return base64.b64encode(nifti_gz_bytes(data, affine, slope=slope, inter=inter)).decode("ascii")


def _prepare(
    layers: list[Layer], roles: list[str], max_voxels: int, map_bits: int = 8
) -> tuple[list[dict], list[str]]:
    """One JSON-ready dict per layer (base64 NIfTI + display settings) and notes for the page."""
    notes: list[str] = []
    reduced = []
    for lay, role in zip(layers, roles):
        data = np.asarray(lay.data)
        if data.ndim != 3:
            raise BrainaeError(f"{lay.name}: a view needs 3-D volumes, got shape {data.shape}")
        if not np.isfinite(data).all():
            raise BrainaeError(f"{lay.name}: has NaN/Inf voxels; a view needs finite values")
        f = downsample_factors(data.shape, max_voxels)
        how = "max" if role == "overlay" and data.min() >= 0 else "mean"
        small, aff = reduce_blocks(data.astype(np.float32), lay.affine, f, how=how)
        if f != (1, 1, 1):
            notes.append(
                f"{lay.name}: {data.shape[0]}x{data.shape[1]}x{data.shape[2]} voxels shown as "
                f"{small.shape[0]}x{small.shape[1]}x{small.shape[2]} (block {how} of {f[0]}x{f[1]}x{f[2]})"
            )
        reduced.append((small, aff))
    scans = [i for i, r in enumerate(roles) if r != "overlay"]
    wins, shared = _scan_windows([reduced[i][0] for i in scans])
    window = dict(zip(scans, wins))
    if len(scans) > 1:
        notes.append(
            "the scans share one intensity window"
            if shared
            else "the scans' intensity ranges differ by more than a factor 2: each has its own window"
        )
    specs = []
    k = 0
    for i, (lay, role) in enumerate(zip(layers, roles)):
        small, aff = reduced[i]
        if role != "overlay":
            lo, hi = window[i]
            q, slope, inter = quantize(small, lo, hi, "uint8")
            spec = {"colormap": "gray", "cal_min": lo, "cal_max": hi, "opacity": 1.0, "bits": 8}
        else:
            lo, hi = min(0.0, float(small.min())), float(small.max())
            if lo < 0:
                notes.append(
                    f"{lay.name}: negative values are not coloured (the threshold applies to the positive ones)"
                )
            if not hi > lo:
                notes.append(f"{lay.name}: every voxel is {hi:g}; nothing to colour")
            dtype = "uint16" if map_bits == 16 and not _is_small_ints(small) else "uint8"
            q, slope, inter = quantize(small, lo, hi, dtype)
            thr = lay.threshold if lay.threshold is not None else _default_threshold(small)
            thr = float(min(max(thr, lo), hi))
            spec = {
                "colormap": OVERLAY_COLORMAPS[k % len(OVERLAY_COLORMAPS)],
                "cal_min": thr,
                "cal_max": hi if hi > thr else thr + 1e-6,
                "min": lo,
                "max": hi,
                "opacity": 0.8 if lay.visible and hi > lo else 0.0,
                "visible": bool(lay.visible and hi > lo),  # an empty map starts hidden
                "bits": 8 if dtype == "uint8" else 16,
            }
            k += 1
        spec.update(
            name=lay.name,
            role=role,
            shape=list(small.shape),
            file=f"volume{i}.nii.gz",
            b64=_encode(q, aff, slope, inter),
        )
        specs.append(spec)
    return specs, notes


def build_page(
    base: Layer,
    others: Sequence[Layer] = (),
    *,
    mode: str = "beside",
    title: str | None = None,
    max_voxels: int = DEFAULT_MAX_VOXELS,
    map_bits: int = 8,
) -> tuple[str, list[str]]:
    """The HTML page (a string) and its notes; see :func:`write_view`."""
    if mode not in MODES:
        raise BrainaeError(f"unknown view mode {mode!r}; choose one of: {', '.join(MODES)}")
    if map_bits not in (8, 16):
        raise BrainaeError(f"map_bits must be 8 or 16, got {map_bits}")
    layers = [base, *others]
    roles = ["base", *(("overlay" if mode == "overlay" else "beside") for _ in others)]
    specs, notes = _prepare(layers, roles, max_voxels, map_bits)
    panes = [[0, *range(1, len(specs))]] if mode == "overlay" else [[i] for i in range(len(specs))]
    payload = {"volumes": specs, "panes": panes, "expected": len(specs)}
    data_json = json.dumps(payload, allow_nan=False, separators=(",", ":")).replace("</", "<\\/")
    niivue_gz = _niivue_gz_base64()
    title = title or f"{base.name} - brainae view"
    figures = "".join(
        f'<figure class="pane"><figcaption>{html.escape(" + ".join(specs[i]["name"] for i in pane))}'
        f' <output id="loc{j}" class="loc"></output></figcaption>'
        f'<div class="canvas-box"><canvas id="pane{j}"></canvas></div></figure>'
        for j, pane in enumerate(panes)
    )
    controls = "".join(
        f'<fieldset class="overlay" data-index="{i}"><legend>{html.escape(s["name"])}</legend>'
        f'<label><input type="checkbox" class="show"{" checked" if s["visible"] else ""}> show</label>'
        f' <label>threshold <input type="range" class="threshold" min="{s["min"]!r}" max="{s["max"]!r}"'
        f' step="any" value="{s["cal_min"]!r}"> <output class="thr">{s["cal_min"]:.4g}</output></label>'
        f' <label>opacity <input type="range" class="opacity" min="0" max="1" step="0.05" value="0.8"></label>'
        f"</fieldset>"
        for i, s in enumerate(specs)
        if s["role"] == "overlay"
    )
    note_html = "".join(f"<li>{html.escape(n)}</li>" for n in notes)
    values = {
        "GENERATOR": GENERATOR,
        "TITLE": html.escape(title),
        "NPANES": str(len(panes)),
        "FIGURES": figures,
        "CONTROLS": controls,
        "NOTES": note_html,
        "MODE": mode,
        "BITS": _bits_note(specs),
        "APP": _APP,
        "NIIVUE": niivue_gz,
        "DATA": data_json,
    }
    page = re.sub(r"\{\{([A-Z]+)\}\}", lambda m: values[m.group(1)], _PAGE)  # one pass: no re-expansion
    return page, notes


@functools.lru_cache(maxsize=1)
def _niivue_gz_base64() -> str:
    """The vendored NiiVue bundle, gzipped and base64-encoded (2.3 MB -> 1.1 MB in the page; the page
    decompresses it with the browser's own ``DecompressionStream``)."""
    from importlib.resources import files

    bundle = files("brainae") / "_vendor" / "niivue" / "niivue.umd.js"
    try:
        raw = bundle.read_bytes()
    except OSError as exc:
        raise BrainaeError(f"the NiiVue viewer bundle is missing from the installation ({exc})") from None
    return base64.b64encode(gzip.compress(raw, compresslevel=9, mtime=0)).decode("ascii")


def _bits_note(specs: list[dict]) -> str:
    scans = sum(1 for s in specs if s["role"] != "overlay")
    maps = len(specs) - scans
    text = f"{scans} scan(s) stored at 8 bits (brightest 0.1 % clipped)"
    if maps:
        bits = sorted({s["bits"] for s in specs if s["role"] == "overlay"})
        text += f", {maps} map(s) at {' or '.join(map(str, bits))} bits"
    return text


def is_view_page(path: str | os.PathLike) -> bool:
    """True for an HTML file that :func:`write_view` wrote (it carries the generator tag)."""
    from brainae.io import has_tag

    return has_tag(path, GENERATOR, 1024)


def check_view_output(out: str | os.PathLike, inputs: Sequence[str | os.PathLike], *, force: bool) -> Path:
    """Refuse a page path that is not ``.html``/``.htm``, is an input, or exists (without ``force``, or is not
    a page that brainae view wrote). Call before any work."""
    from brainae.io import check_html_output, check_not_input

    out = Path(out)
    if out.suffix.lower() not in (".html", ".htm"):
        raise BrainaeError(f"{out}: a view is an HTML page; end the name with .html")
    check_not_input(out, [Path(p) for p in inputs], "view page")
    check_html_output(
        out,
        force,
        is_view_page,
        what="a page that brainae view wrote",
        name_it="name",
        other="name",
        example="view.html",
    )
    return out


def write_view(
    path: str | os.PathLike,
    base: Layer,
    others: Sequence[Layer] = (),
    *,
    mode: str = "beside",
    title: str | None = None,
    max_voxels: int = DEFAULT_MAX_VOXELS,
    map_bits: int = 8,
) -> ViewSummary:
    """Write one self-contained HTML page with an interactive 3-D view of ``base`` and ``others`` (atomically).

    Args:
        path: the page to write (``.html``); check it first with :func:`check_view_output`.
        base: the scan every pane starts from.
        others: volumes shown beside ``base`` (``mode="beside"``) or on it as thresholdable colour overlays
            (``mode="overlay"``).
        mode: "beside" or "overlay".
        title: the page's title (default: the base's name).
        max_voxels: voxels kept per volume (larger volumes are reduced, see the module notes).
        map_bits: 8 or 16, the precision of overlay maps in the page.

    Returns:
        A :class:`ViewSummary`.

    Raises:
        BrainaeError: an unknown mode, a volume that is not 3-D or has NaN/Inf voxels, a missing viewer
            bundle, or a write error.
    """
    from brainae.io import atomic_path

    page, notes = build_page(base, others, mode=mode, title=title, max_voxels=max_voxels, map_bits=map_bits)
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(page, encoding="utf-8")
    names = [base.name, *(o.name for o in others)]
    return ViewSummary(path=path, bytes=path.stat().st_size, volumes=names, notes=notes)


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">{{GENERATOR}}
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{TITLE}}</title>
<style>
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;background:#111;color:#ddd}
header{padding:.5em 1em}h1{font-size:1.2em;margin:.2em 0}
#controls{padding:0 1em;display:flex;flex-wrap:wrap;gap:.5em 1.5em;align-items:center}
fieldset{border:1px solid #444;padding:.2em .6em}legend{color:#fc6}
.panes{display:grid;gap:4px;padding:4px;grid-template-columns:repeat(auto-fit,minmax(360px,1fr))}
.pane{margin:0}figcaption{font-size:.85em;padding:2px 4px;color:#aaa}
.canvas-box{height:72vh;min-height:300px;background:#000}
.loc{color:#8cf;margin-left:1em}
#status{padding:0 1em;color:#fc6}body[data-status=ready] #status{color:#8c8}
.notes{font-size:.8em;color:#999;margin:.2em 0}
</style></head>
<body data-status="loading" data-loaded="0" data-mode="{{MODE}}" data-panes="{{NPANES}}">
<header><h1>{{TITLE}}</h1>
<p class="notes">NiiVue 3-D viewer (drag in a slice to move the crosshair, in the 3-D view to rotate; scroll
to change slice or zoom). {{BITS}}.</p><ul class="notes">{{NOTES}}</ul></header>
<div id="controls"><label>view <select id="layout">
<option value="3">slices + 3-D</option><option value="0">axial</option><option value="1">coronal</option>
<option value="2">sagittal</option><option value="4">3-D only</option></select></label>
{{CONTROLS}}</div>
<p id="status" role="status">Loading the volumes...</p>
<div class="panes">{{FIGURES}}</div>
<script type="application/json" id="brainae-view-data">{{DATA}}</script>
<script type="application/octet-stream" id="niivue-gz">{{NIIVUE}}</script>
<script>{{APP}}</script>
</body></html>
"""

_APP = """
(async function () {
  "use strict";
  const body = document.body;
  const status = document.getElementById("status");
  async function loadViewer() {  // the NiiVue bundle travels gzipped: unpack it and run it as a script
    const b64 = document.getElementById("niivue-gz").textContent.trim();
    const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("gzip"));
    const code = await new Response(stream).arrayBuffer();
    const url = URL.createObjectURL(new Blob([code], { type: "text/javascript" }));
    await new Promise((resolve, reject) => {
      const script = document.createElement("script");
      script.onload = resolve;
      script.onerror = () => reject(new Error("the NiiVue viewer could not be started"));
      script.src = url;
      document.head.appendChild(script);
    });
  }
  function fail(message) {
    body.dataset.status = "error";
    body.dataset.error = message;
    status.textContent = "Could not show the volumes: " + message;
    console.error("brainae-view: " + message);
  }
  try {
    if (typeof DecompressionStream === "undefined") {
      fail("this browser is too old to unpack the viewer (no DecompressionStream); open the page in a current Chrome, Firefox or Safari");
      return;
    }
    await loadViewer();
    if (typeof niivue === "undefined") { fail("the NiiVue viewer did not load"); return; }
    if (!document.createElement("canvas").getContext("webgl2")) {
      fail("this browser has no WebGL2, which the NiiVue viewer needs; open the page in a current Chrome, Firefox or Safari");
      return;
    }
    const spec = JSON.parse(document.getElementById("brainae-view-data").textContent);
    const viewers = [];
    for (let p = 0; p < spec.panes.length; p++) {
      const overlays = spec.panes[p].length > 1;
      const nv = new niivue.Niivue({
        backColor: [0, 0, 0, 1], show3Dcrosshair: true, isColorbar: overlays,
        multiplanarShowRender: niivue.SHOW_RENDER.ALWAYS,
      });
      await nv.attachTo("pane" + p);
      for (const i of spec.panes[p]) {
        const v = spec.volumes[i];
        const img = await niivue.NVImage.loadFromBase64({
          base64: v.b64, name: v.file, colormap: v.colormap, opacity: v.opacity,
          cal_min: v.cal_min, cal_max: v.cal_max, trustCalMinMax: true,
        });
        img.colorbarVisible = v.role === "overlay" && v.visible;
        nv.addVolume(img);
        delete v.b64;
      }
      nv.setSliceType(nv.sliceTypeMultiplanar);
      const loc = document.getElementById("loc" + p);
      nv.onLocationChange = (d) => { loc.textContent = d && d.string ? d.string : ""; };
      viewers.push(nv);
    }
    if (viewers.length > 1) {
      viewers.forEach((nv, i) => nv.broadcastTo(viewers.filter((_, j) => j !== i), { "2d": true, "3d": true }));
    }
    document.getElementById("layout").addEventListener("change", (e) => {
      for (const nv of viewers) nv.setSliceType(Number(e.target.value));
    });
    const nv0 = viewers[0];
    for (const fs of document.querySelectorAll("fieldset.overlay")) {
      const vi = spec.panes[0].indexOf(Number(fs.dataset.index));
      const thr = fs.querySelector(".threshold");
      const out = fs.querySelector(".thr");
      const opa = fs.querySelector(".opacity");
      const show = fs.querySelector(".show");
      const apply = () => {
        const vol = nv0.volumes[vi];
        const t = Number(thr.value);
        vol.cal_min = t;
        vol.cal_max = Math.max(Number(thr.max), t + 1e-6);
        out.textContent = t.toPrecision(4);
        vol.colorbarVisible = show.checked;
        nv0.setOpacity(vi, show.checked ? Number(opa.value) : 0);
        nv0.updateGLVolume();
      };
      thr.addEventListener("input", apply);
      opa.addEventListener("input", apply);
      show.addEventListener("change", apply);
    }
    const loaded = viewers.reduce((n, nv) => n + nv.volumes.length, 0);
    body.dataset.loaded = String(loaded);
    if (loaded !== spec.expected) { fail("loaded " + loaded + " of " + spec.expected + " volumes"); return; }
    body.dataset.status = "ready";
    status.textContent = loaded + " volume(s) loaded.";
    console.log("brainae-view: loaded " + loaded + " volume(s)");
  } catch (e) {
    fail(String((e && e.message) || e));
  }
})();
"""
