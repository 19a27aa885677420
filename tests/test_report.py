"""The HTML report: every section id, self-contained, builds from a tiny evaluation and partial inputs."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from brainae.errors import BrainaeError
from brainae.evaluate import evaluate
from brainae.report import SECTIONS, build_report
from brainae.stats import run_stats
from conftest import make_checkpoint, make_dataset


def _run(path: Path, name: str) -> Path:
    run = path / name
    run.mkdir(parents=True)
    epochs = np.arange(1, 6)
    pd.DataFrame(
        {
            "epoch": epochs,
            "train_loss": 0.01 / epochs,
            "val_loss": 0.012 / epochs,
            "val_mse": 0.012 / epochs,
            "val_dssim": 0.05 / epochs,
            "val_psnr": 20 + epochs,
            "lr": 1e-3,
        }
    ).to_csv(run / "metrics.csv", index=False)
    (run / "config.json").write_text('{"arch": "skip-cae", "loss": "mse", "l2": 0.0, "augment": true}')
    return run


def test_report_full(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "data")
    pd.DataFrame(
        {"volume_id": ["a", "b"], "slice": [1, 2], "keep_nonzero_count": [1, 0], "keep_brain_mask": [1, 1]}
    ).to_csv(data / "selection.csv", index=False)
    pd.DataFrame({"split": ["train", "test"], "n": [2, 3]}).to_csv(data / "split.csv", index=False)
    runs = tmp_path / "runs"
    ck = make_checkpoint(_run(runs, "r1") / "best.safetensors")
    _run(runs, "r2")
    ev = evaluate([ck], data, tmp_path / "eval", conditions="clean,noise-0.04,blank-20", n_examples=2)
    run_stats(ev)
    out = build_report([data, runs, ev], tmp_path / "report.html")
    text = out.read_text()
    for sid in SECTIONS:
        assert f'<section id="{sid}">' in text
    assert 'src="http' not in text and 'href="http' not in text and "<link" not in text
    assert len(re.findall(r'src="data:image/png;base64,', text)) >= 6
    assert "r1" in text and "identity" in text and "biharmonic" in text and "p_volume_holm" in text
    assert "No paired tests" not in text
    assert "custom corruption" in text  # the combined example condition


def test_report_partial_inputs(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    _run(runs, "r1")
    out = build_report([runs / "r1"], tmp_path / "r.html", title="only <curves>")
    text = out.read_text()
    for sid in SECTIONS:
        assert f'<section id="{sid}">' in text
    assert "No evaluation folder" in text and "No paired tests" in text and "only &lt;curves&gt;" in text
    with pytest.raises(BrainaeError, match="no such folder"):
        build_report([tmp_path / "missing"], tmp_path / "x.html")


def test_cli_report(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from brainae.cli import app

    runs = tmp_path / "runs"
    _run(runs, "r1")
    res = CliRunner().invoke(app, ["report", str(runs), "-o", str(tmp_path / "r.html")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "r.html").is_file()


# ------------------------------------------------------------------- what a reader needs (issue 11)


def _section(text: str, sid: str) -> str:
    return re.search(rf'<section id="{sid}">(.*?)</section>', text, re.S).group(1)


@pytest.fixture(scope="module")
def demo_like(tmp_path_factory) -> tuple[Path, str]:
    """A report of a dataset, a run (nested config.json, as train writes it), an inspect folder, an evaluation
    of two checkpoints and baselines on 3 test volumes, and its stats."""
    import json

    from brainae.prepare import write_inspect
    from conftest import synthetic_head, write_volume

    tmp = tmp_path_factory.mktemp("report")
    scans = tmp / "scans"
    scans.mkdir()
    for i in range(2):
        write_volume(scans / f"IXI{i:03d}-HH-1-T1.nii.gz", synthetic_head(seed=i))
    write_inspect(scans, tmp / "inspect")
    data = make_dataset(tmp / "data")
    run = _run(tmp, "res-unet_mse_l2_aug")
    cfg = {"arch": "res-unet", "loss": "mse", "l2": 1e-5, "augment": False}
    (run / "config.json").write_text(json.dumps({"config": cfg, "dataset": str(data)}))
    good = make_checkpoint(run / "best.safetensors")
    other = make_checkpoint(tmp / "other" / "weak.safetensors", seed=1)
    ev = evaluate([good, other], data, tmp / "eval", conditions="clean,noise-0.04,blank-20", n_examples=2)
    run_stats(ev, metrics=("mse", "psnr"))
    out = build_report([tmp / "inspect", data, run, ev], tmp / "report.html")
    return ev, out.read_text()


def test_report_leads_with_the_answer(demo_like) -> None:
    ev, text = demo_like
    sections = re.findall(r'<section id="([a-z]+)">', text)
    assert sections[0] == "headline" and list(SECTIONS)[0] == "headline"
    head = _section(text, "headline")
    summary = pd.read_csv(ev / "summary.csv")
    for cond in ("clean", "noise-0.04", "blank-20"):
        sub = summary[
            (summary["condition"] == cond) & ~((summary["model"] == "identity") & (cond == "clean"))
        ]
        best = sub.loc[sub["psnr_mean"].idxmax(), "model"]
        assert re.search(rf"<b>{re.escape(cond)}</b>: <b>{re.escape(best)}</b> is best", head), (cond, best)
    assert "95 % CI" in head and "over volumes" in head  # 3 test volumes: intervals over volumes
    # identity on clean input is the target itself (capped 100 dB): never "best"
    assert "<b>clean</b>: <b>identity</b>" not in head
    # 3 volumes, 2+ pairs: the per-volume Wilcoxon cannot reach 0.05, and the report says so
    assert "too few volumes (3) to reach significance" in head
    assert "Too few volumes to reach significance" in _section(text, "stats")


def test_every_figure_has_alt_text_and_a_caption(demo_like) -> None:
    import base64
    import io

    import matplotlib.image as mpimg

    _, text = demo_like
    figures = re.findall(r"<figure>(.*?)</figure>", text, re.S)
    images = re.findall(r'<img alt="([^"]*)" src="data:image/png;base64,([^"]+)">', text)
    assert len(images) >= 8 and len(figures) == len(images)
    for alt, data in images:
        assert len(alt) > 30 and alt.lower() not in ("figure",) and not alt.endswith(".png"), alt
        pixels = mpimg.imread(io.BytesIO(base64.b64decode(data)), format="png")
        assert pixels.ndim == 3 and pixels.shape[0] > 50 and pixels.std() > 0  # decodes, not blank
    for fig in figures:
        caption = re.search(r"<figcaption>(.*?)</figcaption>", fig, re.S).group(1)
        assert len(caption) > 40 and ".png" not in caption, caption


def test_training_table_and_models_are_named(demo_like) -> None:
    _, text = demo_like
    training = _section(text, "training")
    row = re.search(r"<tr><td>res-unet_mse_l2_aug</td>(.*?)</tr>", training).group(1)
    cells = re.findall(r"<td>(.*?)</td>", row)
    assert cells[:4] == ["res-unet", "mse", "1e-05", "no"]  # arch, loss, L2, augment from the nested config


def test_bar_charts_and_baselines_explain_identity_and_do_not_repeat(demo_like) -> None:
    _, text = demo_like
    charts = _section(text, "charts")
    assert "identity is left out" in charts and "95 % confidence intervals" in charts
    baselines = _section(text, "baselines")
    corrupted = _section(text, "corrupted")
    assert "<h4>MSE</h4>" in corrupted and "<h4>" not in baselines  # no repeated metric tables
    assert "best baseline" in baselines and "denoise_nl_means" in baselines and "score to beat" in baselines


def test_inspect_folder_feeds_the_data_section(demo_like) -> None:
    _, text = demo_like
    data = _section(text, "data")
    assert "Inspected volumes (2" in data and "No inspect.csv" not in data
    assert "2 usable, none unusable" in data


def test_report_html_is_well_formed_and_every_section_has_content(demo_like) -> None:
    from html.parser import HTMLParser

    _, text = demo_like
    void = {"meta", "img", "br", "hr", "link", "input"}

    class Checker(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.stack: list[str] = []
            self.errors: list[str] = []

        def handle_starttag(self, tag, attrs):  # noqa: ANN001
            if tag not in void:
                self.stack.append(tag)

        def handle_endtag(self, tag):  # noqa: ANN001
            if not self.stack or self.stack[-1] != tag:
                self.errors.append(f"</{tag}> closes <{self.stack[-1] if self.stack else None}>")
            else:
                self.stack.pop()

    checker = Checker()
    checker.feed(text)
    assert not checker.errors and not checker.stack, (checker.errors[:5], checker.stack)
    for sid in SECTIONS:
        body = re.sub(r"<[^>]+>", "", _section(text, sid))
        assert len(body.strip()) > len(SECTIONS[sid]) + 20, sid  # more than its heading


def test_cli_report_shows_progress_in_a_log(tmp_path: Path, monkeypatch) -> None:
    from typer.testing import CliRunner

    import brainae.cli._app as cli_app
    from brainae.cli import app

    monkeypatch.setattr(cli_app, "LOG_EVERY_S", 0.0)
    _run(tmp_path / "runs", "r1")
    res = CliRunner().invoke(app, ["report", str(tmp_path / "runs"), "-o", str(tmp_path / "r.html")])
    assert res.exit_code == 0, res.output
    lines = [ln for ln in res.output.splitlines() if ln.startswith("building the report: ")]
    assert len(lines) == 3 and lines[-1].startswith("building the report: 3/3 done in "), res.output


def test_short_run_note_tells_fine_tuning_from_a_random_start():
    from brainae.report import _short_runs

    scratch = _short_runs({"models": [{"name": "a", "training": {"epochs_run": 4}}]})
    tuned = _short_runs(
        {"models": [{"name": "b", "training": {"epochs_run": 4, "init": "/x/thesis.safetensors"}}]}
    )
    full = _short_runs({"models": [{"name": "c", "training": {"epochs_run": 60}}]})
    assert "well below a fully trained one" in scratch and "fine-tuned" not in scratch
    assert (
        "fine-tuned for 4 epoch(s) from the weights of thesis.safetensors" in tuned
        and "well below" not in tuned
    )
    assert full == ""
