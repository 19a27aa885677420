"""3-D view pages (brainae.view, ``brainae view``, ``--view``): array preparation, the page's content, and
the page opened in headless Chromium (volumes loaded, a non-blank picture, the threshold slider working)."""

from __future__ import annotations

import base64
import gzip
import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

import brainae
from brainae.cli import app
from brainae.errors import BrainaeError
from brainae.io import load_volume
from brainae.view import (
    Layer,
    build_page,
    check_view_output,
    downsample_factors,
    is_view_page,
    layer,
    quantize,
    reduce_blocks,
    write_view,
)
from browser import open_page
from conftest import psr_affine, synthetic_head, write_volume

AFFINE = psr_affine()


def _head(tmp_path: Path, name: str = "scan.nii.gz", seed: int = 0) -> Path:
    return write_volume(tmp_path / name, synthetic_head(seed=seed))


def _blob_map(shape, value: float = 50.5) -> np.ndarray:
    """A cube at ``value`` in the middle and, beside it, a faint slab at ``value / 10``."""
    m = np.zeros(shape, np.float32)
    c = [s // 2 for s in shape]
    m[c[0] - 4 : c[0] + 4, c[1] - 4 : c[1] + 4, c[2] - 4 : c[2] + 4] = value
    m[c[0] - 4 : c[0] + 4, c[1] - 4 : c[1] + 4, c[2] + 5 : c[2] + 10] = value / 10
    return m


def _page_data(text: str) -> dict:
    m = re.search(r'<script type="application/json" id="brainae-view-data">(.*?)</script>', text, re.S)
    assert m, "no embedded data"
    return json.loads(m.group(1))


def _decode(spec: dict) -> nib.Nifti1Image:
    raw = gzip.decompress(base64.b64decode(spec["b64"]))
    return nib.Nifti1Image.from_bytes(raw)


# ------------------------------------------------------------------------------------- pure functions


def test_downsample_factors_fit_and_prefer_longest_axis() -> None:
    assert downsample_factors((256, 256, 150), 256**3) == (1, 1, 1)
    f = downsample_factors((512, 512, 300), 256**3)
    assert f == (2, 2, 2)
    f = downsample_factors((600, 100, 100), 1_000_000)
    assert f == (8, 1, 1) and np.prod([-(-600 // 8), 100, 100]) <= 1_000_000
    with pytest.raises(BrainaeError, match="at least 1"):
        downsample_factors((4, 4, 4), 0)


def test_reduce_blocks_mean_max_and_world_positions() -> None:
    rng = np.random.default_rng(0)
    data = rng.random((9, 8, 6)).astype(np.float32)
    aff = np.array([[0, 0, 2.5, -40], [-2, 0, 0, 40], [0, 2, 0, -40], [0, 0, 0, 1.0]])
    small, saff = reduce_blocks(data, aff, (2, 2, 3), how="mean")
    assert small.shape == (5, 4, 2)
    assert np.isclose(small[1, 2, 1], data[2:4, 4:6, 3:6].mean())
    # the reduced voxel's centre is the mean world position of the voxels it covers
    idx = np.array([[i, j, k, 1] for i in (2, 3) for j in (4, 5) for k in (3, 4, 5)], float)
    assert np.allclose(saff @ [1, 2, 1, 1], (aff @ idx.T).T.mean(axis=0))
    big, _ = reduce_blocks(data, aff, (2, 2, 3), how="max")
    assert np.isclose(big[1, 2, 1], data[2:4, 4:6, 3:6].max())
    same, saff1 = reduce_blocks(data, aff, (1, 1, 1))
    assert same is data and np.allclose(saff1, aff)
    with pytest.raises(BrainaeError, match="mean"):
        reduce_blocks(data, aff, (2, 2, 2), how="median")


def test_quantize_round_trip_within_half_a_step() -> None:
    x = np.linspace(-3.0, 7.0, 1001)
    for dtype in ("uint8", "uint16"):
        q, slope, inter = quantize(x, -3.0, 7.0, dtype)
        assert q.dtype == np.dtype(dtype) and q.min() == 0 and q.max() == np.iinfo(dtype).max
        assert np.abs(q * slope + inter - x).max() <= slope / 2 + 1e-9
    q, slope, inter = quantize(np.full(5, 4.0), 4.0, 4.0)
    assert (q == 0).all() and inter == 4.0 and slope == 1.0


# ------------------------------------------------------------------------------------------ the page


def test_page_is_self_contained_and_volumes_round_trip(tmp_path: Path) -> None:
    vol = load_volume(_head(tmp_path))
    result = vol.data * 0.3 + 3.0
    text, notes = build_page(layer(vol), [layer(vol, "half", data=result)], mode="beside")
    assert 'src="http' not in text and 'href="http' not in text and "<link" not in text
    assert "<script src" not in text
    packed = re.search(r'<script type="application/octet-stream" id="niivue-gz">(.*?)</script>', text, re.S)
    vendored = Path(brainae.__file__).parent / "_vendor" / "niivue" / "niivue.umd.js"
    assert (
        gzip.decompress(base64.b64decode(packed.group(1))) == vendored.read_bytes()
    )  # the viewer, unmodified
    data = _page_data(text)
    assert data["expected"] == 2 and data["panes"] == [[0], [1]]
    assert any("own window" in n for n in notes)  # ranges differ by more than a factor 2
    for spec, arr in zip(data["volumes"], (vol.data, result)):
        img = _decode(spec)
        assert img.get_data_dtype() == np.uint8
        assert np.allclose(img.affine, vol.affine)
        back = np.asarray(img.dataobj, dtype=np.float64)
        step = (spec["cal_max"] - spec["cal_min"]) / 255
        clipped = np.clip(arr, spec["cal_min"], spec["cal_max"])
        assert np.abs(back - clipped).max() <= step / 2 + 1e-4


@pytest.mark.parametrize("bits", [8, 16])
def test_overlay_maps_keep_their_values_and_thresholds(tmp_path: Path, bits: int) -> None:
    vol = load_volume(_head(tmp_path))
    amap = _blob_map(vol.data.shape)
    mask = (amap > 10).astype(np.float32)
    text, _ = build_page(
        layer(vol),
        [layer(vol, "map", data=amap, threshold=20.0), layer(vol, "mask", data=mask, visible=False)],
        mode="overlay",
        map_bits=bits,
    )
    data = _page_data(text)
    assert data["panes"] == [[0, 1, 2]]
    scan, m, k = data["volumes"]
    assert scan["role"] == "base" and m["role"] == "overlay" and k["role"] == "overlay"
    assert _decode(m).get_data_dtype() == np.dtype(f"uint{bits}")
    assert m["cal_min"] == 20.0 and m["max"] == 50.5 and m["bits"] == bits
    assert _decode(k).get_data_dtype() == np.uint8 and k["cal_min"] == 0.5 and k["opacity"] == 0.0
    step = 50.5 / (2**bits - 1)
    assert np.abs(np.asarray(_decode(m).dataobj) - amap).max() <= step / 2 + 1e-6
    assert text.count('class="threshold"') == 2 and 'name="generator" content="brainae view"' in text
    with pytest.raises(BrainaeError, match="8 or 16"):
        build_page(layer(vol), [layer(vol, "map", data=amap)], mode="overlay", map_bits=12)


def test_large_volume_is_reduced_and_the_page_says_so(tmp_path: Path) -> None:
    vol = load_volume(_head(tmp_path))
    amap = _blob_map(vol.data.shape)
    text, notes = build_page(
        layer(vol), [layer(vol, "map", data=amap)], mode="overlay", max_voxels=vol.data.size // 6
    )
    assert len(notes) == 2 and "block mean" in notes[0] and "block max" in notes[1]
    data = _page_data(text)
    img = _decode(data["volumes"][1])
    assert np.prod(img.shape) <= vol.data.size // 6
    assert float(np.asarray(img.dataobj).max()) == pytest.approx(50.5, abs=1e-2)  # the hot spot survives


def test_signed_and_empty_maps_are_shown_with_a_note(tmp_path: Path) -> None:
    vol = load_volume(_head(tmp_path))
    signed = _blob_map(vol.data.shape) - 10.0
    text, notes = build_page(
        layer(vol),
        [layer(vol, "signed", data=signed), layer(vol, "empty", data=np.zeros_like(vol.data))],
        mode="overlay",
    )
    assert any("signed: negative values" in n for n in notes) and any(
        "empty: every voxel is 0" in n for n in notes
    )
    specs = _page_data(text)["volumes"]
    assert specs[1]["min"] == -10.0 and specs[1]["max"] == 40.5
    assert np.allclose(np.asarray(_decode(specs[1]).dataobj), signed, atol=50.5 / 255)
    assert not np.asarray(_decode(specs[2]).dataobj).any() and not specs[2]["visible"]


def test_bad_inputs_are_refused(tmp_path: Path) -> None:
    vol = load_volume(_head(tmp_path))
    bad = vol.data.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(BrainaeError, match="NaN"):
        build_page(layer(vol), [layer(vol, "bad", data=bad)])
    with pytest.raises(BrainaeError, match="3-D"):
        build_page(Layer("flat", np.zeros((4, 4)), np.eye(4)))
    with pytest.raises(BrainaeError, match="mode"):
        build_page(layer(vol), mode="sideways")
    with pytest.raises(BrainaeError, match=r"\.html"):
        check_view_output(tmp_path / "v.png", [], force=False)
    other = tmp_path / "mine.html"
    other.write_text("<html>not brainae</html>")
    with pytest.raises(BrainaeError, match="not a page that brainae view wrote"):
        check_view_output(other, [], force=True)
    written = write_view(tmp_path / "v.html", layer(vol))
    assert is_view_page(written.path) and not is_view_page(other)
    with pytest.raises(BrainaeError, match="already exists"):
        check_view_output(written.path, [], force=False)
    check_view_output(written.path, [], force=True)  # its own page may be replaced


# ------------------------------------------------------------------------------------------------- CLI


def test_cli_view_writes_page_and_refuses_with_one_error_line(tmp_path: Path) -> None:
    scan = _head(tmp_path)
    other = _head(tmp_path, "other.nii.gz", seed=1)
    out = tmp_path / "v.html"
    runner = CliRunner()
    res = runner.invoke(app, ["view", str(scan), str(other), "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert f"wrote {out}" in res.output and _page_data(out.read_text())["expected"] == 2
    for args, message in [
        (["view", str(scan), "-o", str(out)], "already exists"),
        (["view", str(tmp_path / "missing.nii.gz"), "-o", str(tmp_path / "w.html")], "no such file"),
        (["view", str(scan), "-o", str(tmp_path / "w.nii.gz")], "end the name with .html"),
    ]:
        res = runner.invoke(app, args)
        assert res.exit_code == 1, res.output
        lines = [ln for ln in res.output.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], res.output
        assert "Traceback" not in res.output


def test_report_links_view_pages(tmp_path: Path) -> None:
    from brainae.report import build_report
    from test_report import _run

    runs = tmp_path / "runs"
    _run(runs, "r1")
    vol = load_volume(_head(tmp_path))
    page = write_view(tmp_path / "pages" / "my view.html", layer(vol)).path
    out = build_report([runs / "r1"], tmp_path / "report.html", views=[page])
    text = out.read_text()
    assert 'href="pages/my%20view.html"' in text and "Interactive 3-D views" in text
    plain = tmp_path / "plain.html"
    plain.write_text("<html></html>")
    with pytest.raises(BrainaeError, match="not a 3-D view page"):
        build_report([runs / "r1"], tmp_path / "r2.html", views=[plain])


# ------------------------------------------------------------------------------------ in the browser


def _colour_pixels(png: np.ndarray) -> int:
    """Orange-to-yellow pixels (the "warm" overlay) in the slice views: not grey, not the red crosshair, and
    not the colour bar along the bottom."""
    rgb = png[: int(png.shape[0] * 0.85), :, :3].astype(int)
    return int(((rgb[..., 0] > 150) & (rgb[..., 1] > 100) & (rgb[..., 2] < 70)).sum())


def test_view_page_loads_in_chromium_beside(tmp_path: Path) -> None:
    scan = load_volume(_head(tmp_path))
    page = write_view(
        tmp_path / "beside.html", layer(scan), [layer(scan, "smooth", data=scan.data * 0.9)], mode="beside"
    ).path
    with open_page(page, wait_for="document.body.dataset.status !== 'loading'") as pg:
        state = pg.evaluate("[document.body.dataset.status, document.body.dataset.loaded]")
        assert state == ["ready", "2"], pg.evaluate("document.body.dataset.error")
        for pane in ("#pane0", "#pane1"):
            pixels = pg.screenshot_array(pane)
            assert pixels[..., :3].std() > 10, f"{pane} looks blank"
        before = pg.screenshot_array("#pane1")
        pg.page.click("#pane0", position={"x": 60, "y": 60})  # move the crosshair in the first pane
        pg.settle()
        assert pg.evaluate("document.getElementById('loc0').textContent").strip(), "no location read-out"
        after = pg.screenshot_array("#pane1")
        assert np.abs(after.astype(int) - before.astype(int)).max() > 0, "the second pane did not follow"
        pg.page.select_option("#layout", "4")  # 3-D only
        assert pg.screenshot_array("#pane0")[..., :3].std() > 10, "the 3-D view looks blank"


def test_view_page_overlay_threshold_slider_in_chromium(tmp_path: Path) -> None:
    scan = load_volume(_head(tmp_path))
    amap = _blob_map(scan.data.shape)
    page = write_view(
        tmp_path / "overlay.html", layer(scan), [layer(scan, "map", data=amap, threshold=1.0)], mode="overlay"
    ).path
    with open_page(page, wait_for="document.body.dataset.status !== 'loading'") as pg:
        assert pg.evaluate("document.body.dataset.status") == "ready"
        assert pg.evaluate("document.body.dataset.loaded") == "2"
        low = _colour_pixels(pg.screenshot_array("#pane0"))
        pg.set_range(".threshold", 40.0)  # above the faint slab, below the cube
        mid = _colour_pixels(pg.screenshot_array("#pane0"))
        pg.evaluate("document.querySelector('.show').click()")  # hide the overlay
        hidden = _colour_pixels(pg.screenshot_array("#pane0"))
    assert low > 0, "no coloured overlay visible at a low threshold"
    assert 0 < mid < 0.9 * low, (low, mid)  # the slab vanished, the cube stayed
    assert hidden < 0.02 * low, (low, hidden)


def test_view_page_reports_a_volume_that_fails_to_load(tmp_path: Path) -> None:
    """The page reports failure (data-status=error) rather than hanging when a volume does not load."""
    scan = load_volume(_head(tmp_path))
    page = write_view(tmp_path / "v.html", layer(scan)).path
    text = page.read_text()
    broken = tmp_path / "broken.html"
    broken.write_text(text.replace('"b64":"', '"b64":"AAAA', 1))
    with open_page(broken, wait_for="document.body.dataset.status !== 'loading'") as pg:
        assert pg.evaluate("document.body.dataset.status") == "error"
        assert pg.evaluate("document.body.dataset.error")


def _one_error(res, message: str) -> None:
    assert res.exit_code == 1, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], res.output


def test_denoise_inpaint_anomaly_write_view_pages(tmp_path: Path) -> None:
    import torch

    from brainae.checkpoint import save_checkpoint
    from brainae.io import save_nifti
    from brainae.models import build_model
    from brainae.volume import Preprocessing

    scan = _head(tmp_path)
    runner = CliRunner()
    # denoise with brainae's default denoiser: the page holds the scan and the written result
    den, page = tmp_path / "den.nii.gz", tmp_path / "den.html"
    res = runner.invoke(app, ["denoise", str(scan), str(den), "--device", "cpu", "--view", str(page)])
    assert res.exit_code == 0, res.output
    assert f"{page}: 3-D view" in res.output
    specs = _page_data(page.read_text())["volumes"]
    assert [s["role"] for s in specs] == ["base", "beside"]
    shown = np.asarray(_decode(specs[1]).dataobj, dtype=np.float64)
    written = load_volume(den).data
    step = (specs[1]["cal_max"] - specs[1]["cal_min"]) / 255
    inside = written < specs[1]["cal_max"]
    assert np.abs(shown - written)[inside].max() <= step / 2 + 1e-3
    # inpaint (classical fill: no model needed)
    mask = np.zeros(synthetic_head().shape, np.uint8)
    mask[18:22, 18:22, 12:16] = 1
    mpath = write_volume(tmp_path / "mask.nii.gz", mask)
    page2 = tmp_path / "inp.html"
    args = ["inpaint", str(scan), str(mpath), str(tmp_path / "inp.nii.gz"), "--model", "biharmonic"]
    res = runner.invoke(app, [*args, "--view", str(page2)])
    assert res.exit_code == 0, res.output
    assert [s["name"] for s in _page_data(page2.read_text())["volumes"]] == ["scan.nii.gz", "inpainted"]
    # anomaly with a slice autoencoder: the map is an overlay on the scan
    torch.manual_seed(0)
    prep = Preprocessing(size=32)
    normative = {"mean": 0.1, "std": 0.05, "n": 3, "definition": {"selection": {"threshold": 0.05}}}
    ckpt = save_checkpoint(
        tmp_path / "m.safetensors",
        build_model("skip-cae", latent_channels=8),
        preprocessing=prep.to_dict(),
        normative=normative,
    )
    src = save_nifti(tmp_path / "a.nii.gz", synthetic_head(shape=(24, 32, 32)), AFFINE)
    page3 = tmp_path / "an.html"
    res = runner.invoke(
        app, ["anomaly", str(src), "--model", str(ckpt), "--device", "cpu", "--view", str(page3)]
    )
    assert res.exit_code == 0, res.output
    data = _page_data(page3.read_text())
    assert data["panes"] == [[0, 1]] and data["volumes"][1]["role"] == "overlay"
    # refused before any work: a folder IN, an existing page
    folder = tmp_path / "folder"
    folder.mkdir()
    _head(folder)
    _one_error(
        runner.invoke(app, ["denoise", str(folder), str(tmp_path / "o"), "--view", str(tmp_path / "f.html")]),
        "one input file",
    )
    out = tmp_path / "never.nii.gz"
    _one_error(runner.invoke(app, ["denoise", str(scan), str(out), "--view", str(page)]), "already exists")
    assert not out.exists()
