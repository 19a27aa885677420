"""Paired tests: a clearly better model gets a tiny p, identical models p = 1; Holm; files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from brainae.errors import BrainaeError
from brainae.stats import holm, paired_tests, pvalue_matrix, run_stats


def _table(n_vol: int = 12, n_slice: int = 8, seed: int = 0) -> pd.DataFrame:
    """'good' and its copy 'twin' are identical; 'bad' is worse by 0.004 MSE per slice (+ noise)."""
    rng = np.random.default_rng(seed)
    rows = []
    for cond in ("clean", "noise-0.04"):
        for v in range(n_vol):
            for s in range(n_slice):
                base = rng.uniform(1e-4, 1e-2)
                for model, value in (
                    ("good", base),
                    ("bad", base + 0.004 + rng.normal(0, 1e-4)),
                    ("twin", base),
                ):
                    rows.append(
                        {
                            "model": model,
                            "condition": cond,
                            "volume_id": f"v{v}",
                            "slice": s,
                            "row": v * n_slice + s,
                            "mse": value,
                            "dssim": value / 2,
                            "psnr": -10 * np.log10(value),
                        }
                    )
    return pd.DataFrame(rows)


def test_holm() -> None:
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03]), [0.03, 0.06, 0.06])
    np.testing.assert_allclose(holm([0.5, 0.9]), [1.0, 1.0])
    assert np.isnan(holm([np.nan, 0.01])[0]) and holm([np.nan, 0.01])[1] == 0.01


def test_clearly_better_and_identical() -> None:
    table = paired_tests(_table(), "mse")
    assert len(table) == 6  # 3 pairs x 2 conditions
    pair = table[(table.model_a == "good") & (table.model_b == "bad") & (table.condition == "clean")].iloc[0]
    assert pair.p_slice < 1e-10 and pair.better == "good"
    assert pair.p_volume <= 2 / 2**12 + 1e-12  # exact Wilcoxon: every volume favours 'good'
    assert pair.significant_volume and pair.significant_slice
    twin = table[(table.model_a == "good") & (table.model_b == "twin")].iloc[0]
    assert twin.p_slice == 1 and twin.p_volume == 1 and twin.p_volume_holm == 1 and twin.better == ""
    assert not twin.significant_volume
    psnr = paired_tests(_table(), "psnr")
    assert psnr[(psnr.model_a == "good") & (psnr.model_b == "bad")].iloc[0].better == "good"
    mat = pvalue_matrix(table, "clean", level="volume")
    assert list(mat.index) == ["good", "bad", "twin"] and mat.loc["good", "good"] == 1
    assert mat.loc["good", "bad"] == mat.loc["bad", "good"] < 0.01


def test_few_volumes_do_not_survive() -> None:
    """With 3 volumes no Wilcoxon p can fall below 0.25: the slice-level result does not survive."""
    table = paired_tests(_table(n_vol=3, n_slice=20), "mse")
    pair = table[(table.model_a == "good") & (table.model_b == "bad")].iloc[0]
    assert pair.significant_slice and not pair.significant_volume


def test_run_stats_files(tmp_path: Path) -> None:
    ev = tmp_path / "eval"
    ev.mkdir()
    _table().to_csv(ev / "slices.csv", index=False)
    out = run_stats(ev, metrics=["mse", "psnr"])
    stats = pd.read_csv(out / "stats.csv")
    assert set(stats.metric) == {"mse", "psnr"} and "significant_volume" in stats
    assert (out / "pvalues_mse_clean.png").is_file() and (out / "pvalues_psnr_noise-0.04.png").is_file()
    with pytest.raises(BrainaeError, match="unknown metric"):
        run_stats(ev, metrics=["ssim2"])
    with pytest.raises(BrainaeError, match="slices.csv"):
        run_stats(tmp_path)


def test_too_few_volumes_is_flagged_and_many_are_not() -> None:
    from brainae.stats import min_volume_p

    assert min_volume_p(1) == 1.0 and min_volume_p(5) == pytest.approx(0.0625)
    assert min_volume_p(6, n_pairs=3) == pytest.approx(3 * 2 / 64)
    few = paired_tests(_table(n_vol=3), "mse")  # 3 pairs, 3 volumes: smallest possible Holm p 0.75
    assert not few["volume_can_reach"].any() and (few["p_volume_min"] == 0.75).all()
    assert not few["significant_volume"].any()  # and indeed nothing is significant per volume
    many = paired_tests(_table(n_vol=12), "mse")
    assert many["volume_can_reach"].all()
    assert many.set_index(["model_a", "model_b"]).loc[("good", "bad"), "significant_volume"].all()


def test_mean_ci_uses_volumes_when_there_are_enough() -> None:
    from brainae.stats import mean_ci

    rng = np.random.default_rng(0)
    values = rng.normal(10.0, 1.0, 60)
    volumes = np.repeat([f"v{i}" for i in range(6)], 10)
    mean, lo, hi, unit = mean_ci(values, volumes)
    assert unit == "volumes" and lo < mean < hi and mean == pytest.approx(values.mean())
    mean2, lo2, hi2, unit2 = mean_ci(values[:20], volumes[:20])  # 2 volumes: over slices, and says so
    assert unit2 == "slices" and lo2 < mean2 < hi2
    assert np.isnan(mean_ci([1.0], ["a"])[1])  # one number: no interval


def test_cli_stats_says_when_volumes_are_too_few(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from brainae.cli import app

    ev = tmp_path / "eval"
    ev.mkdir()
    _table(n_vol=3).to_csv(ev / "slices.csv", index=False)
    result = CliRunner().invoke(app, ["stats", str(ev), "--metric", "mse"])
    assert result.exit_code == 0, result.output
    assert "too few volumes (3) for the per-volume test to reach significance" in result.output
    _table(n_vol=12).to_csv(ev / "slices.csv", index=False)
    result = CliRunner().invoke(app, ["stats", str(ev), "--metric", "mse"])
    assert result.exit_code == 0 and "too few volumes" not in result.output, result.output
