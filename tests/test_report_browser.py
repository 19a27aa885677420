"""The HTML report opened in a real (headless) browser: every section renders with its heading, every
embedded figure decodes to a picture, nothing overflows into a JavaScript error, and a linked 3-D view opens."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from brainae.evaluate import evaluate
from brainae.io import load_volume
from brainae.report import SECTIONS, build_report
from brainae.stats import run_stats
from brainae.view import layer, write_view
from browser import open_page, require_chromium
from conftest import synthetic_head, write_volume
from test_evaluate import make_checkpoint, make_dataset
from test_report import _run

SECTION_STATE = """() => Array.from(document.querySelectorAll('section')).map(s => {
  const h = s.querySelector('h2');
  const r = s.getBoundingClientRect();
  return {id: s.id, heading: h ? h.textContent.trim() : null, visible: !!h && h.offsetHeight > 0,
          height: r.height, text: s.innerText.trim().length};
})"""

IMAGE_STATE = """async () => {
  const imgs = Array.from(document.images);
  await Promise.all(imgs.map(i => i.decode().catch(() => null)));
  return imgs.map(i => ({section: i.closest('section') ? i.closest('section').id : null,
                         complete: i.complete, w: i.naturalWidth, h: i.naturalHeight,
                         alt: i.getAttribute('alt')}));
}"""


def _report(tmp_path: Path) -> tuple[Path, Path]:
    data = make_dataset(tmp_path / "data")
    pd.DataFrame({"split": ["train", "test"], "n": [2, 3]}).to_csv(data / "split.csv", index=False)
    runs = tmp_path / "runs"
    ck = make_checkpoint(_run(runs, "r1") / "best.safetensors")
    ev = evaluate([ck], data, tmp_path / "eval", conditions="clean,noise-0.04,blank-20", n_examples=2)
    run_stats(ev)
    scan = load_volume(write_volume(tmp_path / "scan.nii.gz", synthetic_head()))
    view = write_view(tmp_path / "views" / "scan.html", layer(scan)).path
    return build_report([data, runs, ev], tmp_path / "report.html", views=[view]), view


def test_report_sections_and_figures_render_in_chromium(tmp_path: Path) -> None:
    require_chromium()
    report, view = _report(tmp_path)
    with open_page(report, wait_for="document.readyState === 'complete'") as pg:
        sections = pg.page.evaluate(SECTION_STATE)
        images = pg.page.evaluate(IMAGE_STATE)
        title = pg.evaluate("document.querySelector('h1').textContent")
        nav = pg.evaluate("Array.from(document.querySelectorAll('nav a')).map(a => a.getAttribute('href'))")
        link = pg.evaluate("document.querySelector('ul.views a').href")
    assert title.strip() == "brainae report"
    assert [s["id"] for s in sections] == list(SECTIONS), sections
    for s in sections:
        assert s["heading"] == SECTIONS[s["id"]] and s["visible"] and s["height"] > 0, s
        assert s["text"] > len(s["heading"]), f"section {s['id']} has a heading and nothing else"
    assert nav == [f"#{k}" for k in SECTIONS]
    assert len(images) >= 6, images
    broken = [i for i in images if not (i["complete"] and i["w"] > 0 and i["h"] > 0)]
    assert not broken, f"figures that do not decode: {broken}"
    assert {i["section"] for i in images} >= {"training", "charts", "examples"}
    assert Path(link.removeprefix("file://")).resolve() == view.resolve()
    with open_page(link.removeprefix("file://"), wait_for="document.body.dataset.status !== 'loading'") as pg:
        assert pg.evaluate("document.body.dataset.status") == "ready"
